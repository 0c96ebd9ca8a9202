// Real-browser end-to-end test: Debian Chromium publishes its fake camera + microphone over WHIP
// through the demo page, a second page watches the same room over WHEP, and we require decoded
// video and received audio on the viewer.
//
//   node tests/browser/publish_play.mjs
//
// Env:
//   SWITCHBOARD_BIN   server binary (default: target/debug/switchboard in the repo, or $CARGO_TARGET_DIR/debug)
//   CHROMIUM          browser binary (default: /usr/bin/chromium)
//   SWITCHBOARD_NETNS 0 = do not isolate in a private network namespace (default: isolate when possible)
//   VERBOSE           1 = echo server and browser logs while running
//   DUMP_SDP          1 = print both pages' offers and answers at the end
//   SCREENSHOT_DIR    if set, save publisher.png and viewer.png there at the end (pass or fail)
//
// Only loopback is used: the server binds and announces 127.0.0.1, and when `unshare --net` is available
// (root on Linux) the whole test runs in a fresh network namespace whose only interface is `lo`, so
// neither the server nor Chromium can send a packet anywhere else.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { closeBrowser, isolated as inNetns, launchChromium, logging, reexecInNetns, sleep, startServer, stopChild, VERBOSE } from './lib.mjs';

const SELF = fileURLToPath(import.meta.url);

const HARD_TIMEOUT_MS = 120_000; // whole run, whatever happens
const SERVER_START_TIMEOUT_MS = 20_000;
const MEDIA_TIMEOUT_MS = 40_000; // from opening the pages to enough decoded frames
const MIN_FRAMES_DECODED = 60;

const { log, pushLine, collectLines, watchPage } = logging('publish_play', 2000);

function finish(ok, message) {
  if (message) (ok ? console.log : console.error)(`[publish_play] ${ok ? 'PASS' : 'FAIL'}: ${message}`);
  console.log(ok ? '1 passed, 0 failed' : '0 passed, 1 failed');
  process.exit(ok ? 0 : 1);
}

// Stage 0 (lib.mjs): isolate in a private network namespace (only `lo`) when we can.
if (!reexecInNetns({ self: SELF, tag: 'publish_play', log, hardTimeoutMs: HARD_TIMEOUT_MS, failLine: '0 passed, 1 failed' })) {
  await main();
}

// ---------------------------------------------------------------------------------------------
// The test itself
// ---------------------------------------------------------------------------------------------

async function main() {
  const isolated = inNetns();
  if (!isolated) log('network namespace isolation unavailable or disabled; relying on loopback-only addresses');

  let server = null;
  let browser = null;
  const serverLog = [];
  const pageLogs = { publisher: [], viewer: [] };
  let cleaningUp = null;
  const pages = {};
  let base = null;

  const cleanup = async () => {
    if (cleaningUp) return cleaningUp;
    cleaningUp = (async () => {
      await closeBrowser(browser);
      await stopChild(server);
    })();
    return cleaningUp;
  };

  const dumpLogs = () => {
    for (const [who, lines] of Object.entries(pageLogs)) {
      if (lines.length) {
        console.error(`----- ${who} page console (last 40 lines) -----`);
        for (const l of lines.slice(-40)) console.error(l);
      }
    }
    console.error('----- server log (last 80 lines) -----');
    for (const l of serverLog.slice(-80)) console.error(l);
    console.error('-----');
  };

  const hardTimer = setTimeout(() => {
    console.error(`[publish_play] FAIL: hard timeout after ${HARD_TIMEOUT_MS / 1000} s`);
    dumpLogs();
    if (server) try { server.kill('SIGKILL'); } catch { /* gone */ }
    console.log('0 passed, 1 failed');
    process.exit(1); // playwright kills the browser it launched when the process exits
  }, HARD_TIMEOUT_MS);
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, async () => { await cleanup(); finish(false, `interrupted by ${sig}`); });
  }

  let ok = false;
  let message = '';
  try {
    // ----- server -----
    await startServer({
      log, collectLines, sink: serverLog, rustLog: 'info', readyPath: '/', timeoutMs: SERVER_START_TIMEOUT_MS,
      onSpawn: (child, url) => { server = child; base = url; },
    });
    log(`server answers at ${base}`);

    // ----- browser -----
    browser = await launchChromium({ isolated, hint: ' (apt-get install chromium)' });
    log(`launched Chromium ${browser.version()}`);

    const pubCtx = await browser.newContext({ permissions: ['camera', 'microphone'] });
    // A plain viewer context. (--use-fake-ui-for-media-stream still counts as camera permission, so its
    // host candidates are plain addresses; tests/browser/mdns.mjs has the mDNS-only viewer.)
    const viewCtx = await browser.newContext();
    const publisher = await pubCtx.newPage();
    const viewer = await viewCtx.newPage();
    Object.assign(pages, { publisher, viewer });
    for (const [who, page] of [['publisher', publisher], ['viewer', viewer]]) {
      watchPage(page, who, pageLogs[who]);
      page.on('requestfailed', (r) => pushLine(pageLogs[who], `${who}: [requestfailed] ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
      page.on('response', (r) => {
        if (r.request().resourceType() === 'fetch') pushLine(pageLogs[who], `${who}: [http] ${r.request().method()} ${new URL(r.url()).pathname} -> ${r.status()}`);
      });
    }

    const deadline = Date.now() + MEDIA_TIMEOUT_MS;
    await publisher.goto(`${base}/?room=r1&mode=publish&autostart=1`, { timeout: 10_000 });
    // Let the publisher connect first, so the viewer finds a publisher in the room.
    let pub = null;
    while (Date.now() < deadline) {
      pub = await publisher.evaluate(snapshot);
      if (pub.lastError) throw new Error(`publisher page error: ${pub.lastError}`);
      if (pub.state === 'connected') break;
      await sleep(250);
    }
    if (pub?.state !== 'connected') throw new Error(`publisher never connected (state ${pub?.state}, ICE ${pub?.ice})`);
    log(`publisher connected in room r1 (${pub.resource})`);

    await viewer.goto(`${base}/?room=r1&mode=watch&autostart=1`, { timeout: 10_000 });
    let view = null;
    let lastPrint = 0;
    while (Date.now() < deadline) {
      [pub, view] = await Promise.all([publisher.evaluate(snapshot), viewer.evaluate(snapshot)]);
      if (view.lastError) throw new Error(`viewer page error: ${view.lastError}`);
      if (pub.lastError) throw new Error(`publisher page error: ${pub.lastError}`);
      const v = view.inbound.video;
      const a = view.inbound.audio;
      if (VERBOSE || Date.now() - lastPrint > 5000) {
        lastPrint = Date.now();
        log(`viewer ${view.state}: video framesDecoded=${v?.framesDecoded ?? '-'} packets=${v?.packetsReceived ?? '-'}; audio packets=${a?.packetsReceived ?? '-'}`);
      }
      if (v && v.framesDecoded > MIN_FRAMES_DECODED && a && a.packetsReceived > 0) break;
      await sleep(500);
    }
    report(pub, view);
    const v = view?.inbound.video;
    const a = view?.inbound.audio;
    if (!(v && v.framesDecoded > MIN_FRAMES_DECODED)) {
      throw new Error(`viewer decoded ${v?.framesDecoded ?? 0} video frames in ${MEDIA_TIMEOUT_MS / 1000} s (need > ${MIN_FRAMES_DECODED}); viewer state ${view?.state}`);
    }
    if (!(a && a.packetsReceived > 0)) throw new Error('viewer received no audio packets');

    await screenshots(pages);
    await dumpSdp(pages);
    // Stop both sides through the page (DELETE on the Location) and require a clean answer.
    for (const [who, page] of [['viewer', viewer], ['publisher', publisher]]) {
      const after = await page.evaluate(async () => {
        await window.switchboard.stop();
        return { state: window.switchboard.state, lastError: window.switchboard.lastError };
      });
      if (after.lastError) throw new Error(`${who} stop: ${after.lastError}`);
      log(`${who} stopped (DELETE ok)`);
    }
    ok = true;
    message = `viewer decoded ${v.framesDecoded} frames (${v.frameWidth}x${v.frameHeight} ${v.codec}) and received ${a.packetsReceived} audio packets (${a.codec})`;
  } catch (err) {
    message = err?.message || String(err);
    dumpLogs();
    await dumpMetrics(base);
    await screenshots(pages);
    await dumpSdp(pages);
  } finally {
    await cleanup();
    clearTimeout(hardTimer);
  }
  finish(ok, message);
}

// Runs in the page: the state and the stats this test needs.
async function snapshot() {
  const sb = window.switchboard || {};
  const out = { state: sb.state, lastError: sb.lastError, resource: sb.resource, ice: sb.pc?.iceConnectionState, inbound: {}, outbound: {}, pair: null };
  if (!sb.pc) return out;
  const stats = await sb.pc.getStats();
  const codecOf = (r) => (r.codecId && stats.get(r.codecId)?.mimeType) || '';
  stats.forEach((r) => {
    if (r.type === 'inbound-rtp') {
      out.inbound[r.kind] = {
        codec: codecOf(r), packetsReceived: r.packetsReceived, bytesReceived: r.bytesReceived, packetsLost: r.packetsLost,
        framesDecoded: r.framesDecoded, keyFramesDecoded: r.keyFramesDecoded, framesDropped: r.framesDropped,
        frameWidth: r.frameWidth, frameHeight: r.frameHeight, framesPerSecond: r.framesPerSecond,
        nackCount: r.nackCount, pliCount: r.pliCount, firCount: r.firCount, jitter: r.jitter,
      };
    } else if (r.type === 'outbound-rtp') {
      out.outbound[r.kind] = {
        codec: codecOf(r), packetsSent: r.packetsSent, bytesSent: r.bytesSent, framesEncoded: r.framesEncoded,
        keyFramesEncoded: r.keyFramesEncoded, frameWidth: r.frameWidth, frameHeight: r.frameHeight,
        nackCount: r.nackCount, pliCount: r.pliCount, firCount: r.firCount,
      };
    } else if (r.type === 'transport' && r.selectedCandidatePairId) {
      const p = stats.get(r.selectedCandidatePairId);
      const l = p && stats.get(p.localCandidateId);
      const rm = p && stats.get(p.remoteCandidateId);
      out.pair = p && {
        local: l && `${l.candidateType} ${l.address}:${l.port}`,
        remote: rm && `${rm.candidateType} ${rm.address}:${rm.port}`,
        rtt: p.currentRoundTripTime, dtls: r.dtlsState,
      };
    }
  });
  return out;
}

function report(pub, view) {
  const j = (o) => JSON.stringify(o ?? null);
  log(`publisher: state=${pub?.state} pair=${j(pub?.pair)}`);
  log(`publisher outbound video: ${j(pub?.outbound.video)}`);
  log(`publisher outbound audio: ${j(pub?.outbound.audio)}`);
  log(`viewer: state=${view?.state} pair=${j(view?.pair)}`);
  log(`viewer inbound video: ${j(view?.inbound.video)}`);
  log(`viewer inbound audio: ${j(view?.inbound.audio)}`);
}

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

// The server's own counters (Prometheus text), to tell server-side drops from network/browser ones.
async function dumpMetrics(base) {
  if (!base) return;
  try {
    const res = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(2000) });
    if (!res.ok) return;
    const lines = (await res.text()).split('\n').filter((l) => l && !l.startsWith('#') && !/_bucket\{/.test(l));
    console.error('----- server /metrics -----');
    for (const l of lines.slice(0, 80)) console.error(l);
  } catch {
    /* no metrics endpoint: nothing to add */
  }
}

async function dumpSdp(pages) {
  if (process.env.DUMP_SDP !== '1') return;
  for (const [who, page] of Object.entries(pages)) {
    const sdp = await page
      .evaluate(() => ({ offer: window.switchboard.pc?.localDescription?.sdp, answer: window.switchboard.pc?.remoteDescription?.sdp }))
      .catch((e) => ({ error: e.message }));
    console.log(`----- ${who} offer -----\n${sdp.offer ?? sdp.error ?? '(none)'}`);
    console.log(`----- ${who} answer -----\n${sdp.answer ?? '(none)'}`);
  }
}

async function screenshots(pages) {
  const dir = process.env.SCREENSHOT_DIR;
  if (!dir) return;
  for (const [who, page] of Object.entries(pages)) {
    const file = path.resolve(dir, `${who}.png`);
    try {
      await page.screenshot({ path: file, fullPage: true, timeout: 5000 });
      log(`saved ${file}`);
    } catch (err) {
      log(`could not save ${file}: ${err.message}`);
    }
  }
}
