// Simulcast behind a narrow link, with real browsers on both ends: Chromium publishes its fake
// camera in three encodings from the demo page (`?simulcast=1`), and a second Chromium page watches
// over WHEP through a bottleneck relay (shaper.mjs: a token bucket with a 100 ms queue). With the
// link narrower than the top layer, the server's estimate of the viewer (str0m's TWCC estimate, fed
// by Chromium's transport-wide feedback) must move it below the top layer, and keep it there; once
// the link is lifted it must climb back to the top layer. The viewer's decoded frameWidth follows,
// and its picture never freezes for long on the way.
//
//   node tests/browser/simulcast_narrow.mjs
import { fileURLToPath } from 'node:url';
import { browserTest, pageState } from './harness.mjs';
import { startShaper } from './shaper.mjs';

const NARROW_KBPS = 600; // carries the middle layer (about 400 kbit/s) and audio, not the top one
const LAYERS_TIMEOUT_MS = 25_000; // until the publisher's three layers run, with their sizes
const DOWN_TIMEOUT_MS = 15_000; // from the viewer's start to a layer below the top
const HOLD_MS = 5_000; // it stays below the top while the link is narrow
const UP_TIMEOUT_MS = 30_000; // from the link's lifting to the top layer decoded
const MAX_FREEZE_MS = 2_000; // the longest the decoded picture may stand still after it started

// Runs in the viewer page: what its video decoder has done.
async function decoded() {
  const pc = window.switchboard?.pc;
  if (!pc) return null;
  let out = null;
  (await pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') {
      out = { width: r.frameWidth ?? 0, frames: r.framesDecoded ?? 0, lost: r.packetsLost ?? 0, nacks: r.nackCount ?? 0 };
    }
  });
  return out;
}

await browserTest({
  tag: 'simulcast_narrow',
  self: fileURLToPath(import.meta.url),
  hardTimeoutMs: 120_000,
  body: async ({ base, log, openPage, waitFor, sleep }) => {
    const shaper = await startShaper();
    try {
      shaper.setRateKbps(NARROW_KBPS);
      const publisher = await openPage('publisher', { permissions: ['camera', 'microphone'] });
      await publisher.goto(`${base}/?room=narrow&mode=publish&autostart=1&simulcast=1`, { timeout: 10_000 });
      const pub = await waitFor('publisher connected', () => publisher.evaluate(pageState), (s) => s.state === 'connected' || s.lastError, { timeoutMs: 15_000 });
      if (pub.lastError) throw new Error(`publisher: ${pub.lastError}`);

      const viewer = await openPage('viewer');
      // The WHEP answer goes through the relay: its candidate is rewritten to the relay's.
      // Its offer goes without candidates, so the server only learns the relay's address (from the
      // viewer's checks through it) and cannot reach the viewer around it.
      await viewer.route(`${base}/whep/narrow`, async (route) => {
        const request = route.request();
        const offer = request.method() === 'POST' ? request.postData() : null;
        const response = await route.fetch(offer ? { postData: offer.replace(/^a=candidate:.*\r\n/gm, '') } : {});
        if (route.request().method() !== 'POST' || response.status() !== 201) return route.fulfill({ response });
        return route.fulfill({ response, body: shaper.rewriteAnswer(await response.text()) });
      });
      await viewer.goto(`${base}/?room=narrow&mode=watch&autostart=1`, { timeout: 10_000 });
      const view = await waitFor('viewer decoding', () => viewer.evaluate(pageState), (s) => s.lastError || s.video?.framesDecoded >= 5, { timeoutMs: 15_000 });
      if (view.lastError) throw new Error(`viewer: ${view.lastError}`);
      const started = Date.now();
      const layerUrl = `${view.resource}/layer`;
      const report = async () => (await fetch(layerUrl)).json();

      // The decoded picture is sampled all along: the longest it stood still.
      let freeze = { longest: 0, since: Date.now(), frames: -1 };
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const d = await viewer.evaluate(decoded).catch(() => null);
          const now = Date.now();
          if (d && d.frames > freeze.frames) freeze = { ...freeze, since: now, frames: d.frames };
          freeze.longest = Math.max(freeze.longest, now - freeze.since);
          await sleep(100);
        }
      })();
      const describe = (r) => `sending ${r.sending}, estimate ${Math.round((r.estimatedBitrate ?? 0) / 1000)} kbit/s, layers ${(r.layers ?? []).map((l) => `${l.encodingId} ${l.width}x${l.height} ${Math.round(l.bitrate / 1000)}k${l.active ? '' : ' (stopped)'}`).join(', ')}`;

      const layers = (await waitFor(
        'three layers running with their sizes',
        report,
        (r) => r.layers?.length === 3 && r.layers.every((l) => l.active && l.width > 0),
        { timeoutMs: LAYERS_TIMEOUT_MS, everyMs: 250 },
      )).layers;
      const top = [...layers].sort((a, b) => b.width - a.width)[0];
      log(`publisher layers: ${describe({ layers })}`);

      const down = await waitFor(
        `a layer below the top (${top.encodingId}) through ${NARROW_KBPS} kbit/s`,
        async () => ({ r: await report(), d: await viewer.evaluate(decoded) }),
        ({ r, d }) => r.sending && r.sending !== top.encodingId && d && d.width > 0 && d.width < top.width,
        { timeoutMs: DOWN_TIMEOUT_MS, everyMs: 250 },
      );
      log(`narrow link: ${describe(down.r)}; decoding ${down.d.width} px wide ${Date.now() - started} ms after the start; ${shaper.counts.dropped} datagrams dropped at the bottleneck`);
      const holdUntil = Date.now() + HOLD_MS;
      while (Date.now() < holdUntil) {
        const r = await report();
        if (r.sending === top.encodingId) throw new Error(`back on the top layer through ${NARROW_KBPS} kbit/s: ${describe(r)}`);
        await sleep(250);
      }
      const beforeLift = await viewer.evaluate(decoded);

      shaper.setRateKbps(null);
      const lifted = Date.now();
      const up = await waitFor(
        'the top layer decoded again after the link was lifted',
        async () => ({ r: await report(), d: await viewer.evaluate(decoded) }),
        ({ r, d }) => r.sending === top.encodingId && d?.width === top.width,
        { timeoutMs: UP_TIMEOUT_MS, everyMs: 250 },
      );
      const climbed = Date.now() - lifted;
      log(`link lifted: ${describe(up.r)}; decoding ${up.d.width} px wide after ${climbed} ms`);
      sampling = false;
      await sampler;
      if (freeze.longest > MAX_FREEZE_MS) throw new Error(`the picture stood still for ${freeze.longest} ms`);
      return `through ${NARROW_KBPS} kbit/s the viewer was moved to ${down.r.sending} (${down.d.width} px) and stayed there `
        + `(lost ${beforeLift.lost}, ${beforeLift.nacks} NACKs, ${shaper.counts.dropped} dropped at the bottleneck); `
        + `after the lift it decoded the top layer (${top.width} px) in ${climbed} ms; longest still picture ${freeze.longest} ms`;
    } finally {
      shaper.close();
    }
  },
});
