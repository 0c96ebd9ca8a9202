// Simulcast from a real browser: Chromium publishes its fake camera (1280x720) in three encodings
// from the demo page (`?simulcast=1`: rids q, h, f at 1/4, 1/2 and full size), a second page
// watches over WHEP, and the test pins layers through the WHEP layer extension
// (POST {session}/layer): after each pin the viewer's decoded frameWidth (inbound-rtp) must become
// that layer's width, as the layer report states it from the layer's keyframes. Then `{}` returns
// to automatic choice.
//
//   node tests/browser/simulcast.mjs
//
// Chromium's own bandwidth estimate starts low and enables its top encoding once it has grown, so
// the test first waits (up to LAYERS_TIMEOUT_MS) for the server to report all three layers running.
import { fileURLToPath } from 'node:url';
import { browserTest, pageState } from './harness.mjs';

const LAYERS_TIMEOUT_MS = 25_000; // until the server sees the three layers running, with sizes
const SWITCH_TIMEOUT_MS = 5_000; // from a pin to the viewer decoding that layer

// Runs in the viewer page: the decoded size of its video.
async function decodedSize() {
  const pc = window.switchboard?.pc;
  if (!pc) return null;
  let size = null;
  (await pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') size = { width: r.frameWidth ?? 0, height: r.frameHeight ?? 0, frames: r.framesDecoded ?? 0 };
  });
  return size;
}

await browserTest({
  tag: 'simulcast',
  self: fileURLToPath(import.meta.url),
  hardTimeoutMs: 80_000,
  body: async ({ base, log, openPage, waitFor, sleep }) => {
    const publisher = await openPage('publisher', { permissions: ['camera', 'microphone'] });
    await publisher.goto(`${base}/?room=sc&mode=publish&autostart=1&simulcast=1`, { timeout: 10_000 });
    const pub = await waitFor('publisher connected', () => publisher.evaluate(pageState), (s) => s.state === 'connected' || s.lastError, { timeoutMs: 15_000 });
    if (pub.lastError) throw new Error(`publisher: ${pub.lastError}`);
    const offer = await publisher.evaluate(() => window.switchboard.pc.localDescription.sdp);
    const simulcastLine = offer.match(/^a=simulcast:.*$/m)?.[0];
    if (!simulcastLine) throw new Error('the publisher page did not offer simulcast');

    const viewer = await openPage('viewer');
    await viewer.goto(`${base}/?room=sc&mode=watch&autostart=1`, { timeout: 10_000 });
    const view = await waitFor('viewer decoding', () => viewer.evaluate(pageState), (s) => s.lastError || s.video?.framesDecoded >= 10, { timeoutMs: 15_000 });
    if (view.lastError) throw new Error(`viewer: ${view.lastError}`);
    const layerUrl = `${view.resource}/layer`;
    const report = async () => {
      const res = await fetch(layerUrl);
      if (res.status !== 200) throw new Error(`GET ${layerUrl}: ${res.status} ${await res.text()}`);
      return res.json();
    };
    const pin = async (body) => {
      const res = await fetch(layerUrl, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      if (res.status !== 200) throw new Error(`POST ${layerUrl} ${JSON.stringify(body)}: ${res.status} ${await res.text()}`);
      return res.json();
    };

    // All three layers running, each with its size read from its keyframes.
    const layers = (await waitFor(
      'three layers running with their sizes',
      report,
      (r) => r.layers?.length === 3 && r.layers.every((l) => l.active && l.width > 0),
      { timeoutMs: LAYERS_TIMEOUT_MS, everyMs: 250 },
    )).layers;
    log(`publisher offered ${simulcastLine}; layers ${layers.map((l) => `${l.encodingId} ${l.width}x${l.height} ${Math.round(l.bitrate / 1000)} kbit/s`).join(', ')}`);
    const widths = new Set(layers.map((l) => l.width));
    if (widths.size !== 3) throw new Error(`the layers do not differ in size: ${JSON.stringify(layers)}`);

    // Pin the smallest, the largest, then the middle one: each time the decoded width follows.
    const bySize = [...layers].sort((a, b) => a.width - b.width);
    const results = [];
    for (const layer of [bySize[0], bySize[2], bySize[1]]) {
      const started = Date.now();
      const answer = await pin({ encodingId: layer.encodingId });
      if (answer.preference?.pin !== layer.encodingId) throw new Error(`pin ${layer.encodingId}: ${JSON.stringify(answer)}`);
      const size = await waitFor(
        `viewer decoding layer ${layer.encodingId} (${layer.width}x${layer.height})`,
        () => viewer.evaluate(decodedSize),
        (s) => s?.width === layer.width,
        { timeoutMs: SWITCH_TIMEOUT_MS, everyMs: 50 },
      );
      results.push(`${layer.encodingId} ${size.width}x${size.height} after ${Date.now() - started} ms`);
    }
    const auto = await pin({});
    if (auto.preference !== 'auto') throw new Error(`back to automatic: ${JSON.stringify(auto)}`);
    // What automatic choice settles on over a few seconds (logged: a loopback link carries
    // every layer, but the estimate is the browser's feedback).
    await sleep(4000);
    const settled = await report();
    const stats = await viewer.evaluate(pageState);
    log(`automatic: sending ${settled.sending}, estimate ${Math.round((settled.estimatedBitrate ?? 0) / 1000)} kbit/s; viewer received ${stats.video?.packets} video packets, lost ${stats.video?.lost}, sent ${stats.video?.nack} NACKs`);
    const bad = await fetch(layerUrl, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"encodingId":"nope"}' });
    if (bad.status !== 400 || !(bad.headers.get('content-type') || '').includes('problem+json')) {
      throw new Error(`an unknown layer: ${bad.status} ${bad.headers.get('content-type')}`);
    }
    return `pinned through the layer API, the viewer decoded ${results.join('; ')}; back to automatic; an unknown layer is a 400`;
  },
});
