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
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const SELF = fileURLToPath(import.meta.url);

const HARD_TIMEOUT_MS = 120_000; // whole run, whatever happens
const SERVER_START_TIMEOUT_MS = 20_000;
const MEDIA_TIMEOUT_MS = 40_000; // from opening the pages to enough decoded frames
const MIN_FRAMES_DECODED = 60;
const VERBOSE = process.env.VERBOSE === '1';

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  // The server announces only 127.0.0.1; Chromium ignores the loopback interface unless told otherwise.
  '--allow-loopback-in-peer-connection',
  // The viewer page muted-autoplays; make sure playback never waits for a user gesture.
  '--autoplay-policy=no-user-gesture-required',
  '--disable-features=MediaRouter,OptimizationHints,Translate',
  '--disable-dev-shm-usage', // small /dev/shm in containers
  '--disable-default-apps',
  '--disable-extensions',
  '--metrics-recording-only',
  '--no-default-browser-check',
];

function log(...args) {
  console.log('[publish_play]', ...args);
}

function finish(ok, message) {
  if (message) (ok ? console.log : console.error)(`[publish_play] ${ok ? 'PASS' : 'FAIL'}: ${message}`);
  console.log(ok ? '1 passed, 0 failed' : '0 passed, 1 failed');
  process.exit(ok ? 0 : 1);
}

// ---------------------------------------------------------------------------------------------
// Stage 0: isolate in a private network namespace (only `lo`) when we can, by re-running ourselves.
// ---------------------------------------------------------------------------------------------

function netnsUsable() {
  if (process.env.SWITCHBOARD_NETNS === '0' || process.env.SWITCHBOARD_IN_NETNS === '1') return false;
  if (process.platform !== 'linux') return false;
  const probe = spawnSync('unshare', ['--net', '--', 'sh', '-c', 'ip link set lo up'], { stdio: 'ignore', timeout: 5000 });
  return probe.status === 0;
}

if (process.env.SWITCHBOARD_IN_NETNS !== '1' && netnsUsable()) {
  log('running inside a private network namespace (loopback only)');
  const child = spawn(
    'unshare',
    ['--net', '--', 'sh', '-c', 'ip link set lo up && exec "$0" "$@"', process.execPath, SELF, ...process.argv.slice(2)],
    { stdio: 'inherit', detached: true, env: { ...process.env, SWITCHBOARD_IN_NETNS: '1' } },
  );
  const killChild = (sig) => { try { process.kill(-child.pid, sig); } catch { /* gone */ } };
  const hard = setTimeout(() => {
    console.error('[publish_play] FAIL: hard timeout in the namespaced run; killing it');
    killChild('SIGKILL');
    console.log('0 passed, 1 failed');
    process.exit(1);
  }, HARD_TIMEOUT_MS + 15_000);
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killChild('SIGKILL'); process.exit(1); });
  child.on('exit', (code, signal) => {
    clearTimeout(hard);
    killChild('SIGKILL'); // anything left in its process group
    if (signal) {
      console.error(`[publish_play] FAIL: namespaced run died of ${signal}`);
      console.log('0 passed, 1 failed');
      process.exit(1);
    }
    process.exit(code ?? 1);
  });
} else {
  await main();
}

// ---------------------------------------------------------------------------------------------
// The test itself
// ---------------------------------------------------------------------------------------------

async function main() {
  const isolated = process.env.SWITCHBOARD_IN_NETNS === '1';
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
      if (browser) {
        await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
      }
      if (server && server.exitCode === null && server.signalCode === null) {
        server.kill('SIGTERM');
        const exited = await Promise.race([once(server, 'exit').then(() => true), sleep(3000).then(() => false)]);
        if (!exited) server.kill('SIGKILL');
      }
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
    const bin = serverBinary();
    if (!existsSync(bin)) throw new Error(`server binary not found at ${bin} (run \`cargo build\` or set SWITCHBOARD_BIN)`);
    const port = await freePort();
    const args = ['serve', '--listen', `127.0.0.1:${port}`, '--media-ip', '127.0.0.1', '--udp-port-min', '0', '--udp-port-max', '0'];
    log(`starting ${bin} ${args.join(' ')}`);
    server = spawn(bin, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', NO_COLOR: '1' },
    });
    collectLines(server.stdout, serverLog, 'server');
    collectLines(server.stderr, serverLog, 'server');
    const serverExited = once(server, 'exit').then(([code, sig]) => {
      throw new Error(`server exited early (code ${code}, signal ${sig})`);
    });
    serverExited.catch(() => {});
    base = `http://127.0.0.1:${port}`;
    await Promise.race([waitForHttp(base + '/', SERVER_START_TIMEOUT_MS), serverExited]);
    log(`server answers at ${base}`);

    // ----- browser -----
    const { chromium } = await import('playwright-core');
    const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
    if (!existsSync(executablePath)) throw new Error(`Chromium not found at ${executablePath} (apt-get install chromium)`);
    const args2 = [...CHROMIUM_ARGS];
    if (!isolated) {
      // Outside a namespace, keep Chromium from announcing mDNS names (multicast on real interfaces).
      const i = args2.findIndex((a) => a.startsWith('--disable-features='));
      args2[i] += ',WebRtcHideLocalIpsWithMdns';
    }
    browser = await chromium.launch({ executablePath, headless: true, args: args2, timeout: 30_000 });
    log(`launched Chromium ${browser.version()}`);

    const pubCtx = await browser.newContext({ permissions: ['camera', 'microphone'] });
    const viewCtx = await browser.newContext(); // a plain viewer: no camera permission (mDNS host candidates)
    const publisher = await pubCtx.newPage();
    const viewer = await viewCtx.newPage();
    Object.assign(pages, { publisher, viewer });
    for (const [who, page] of [['publisher', publisher], ['viewer', viewer]]) {
      page.on('console', (m) => pushLine(pageLogs[who], `${who}: [${m.type()}] ${m.text()}`));
      page.on('pageerror', (e) => pushLine(pageLogs[who], `${who}: [pageerror] ${e.message}`));
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

function serverBinary() {
  if (process.env.SWITCHBOARD_BIN) return path.resolve(process.env.SWITCHBOARD_BIN);
  const target = process.env.CARGO_TARGET_DIR ? path.resolve(REPO, process.env.CARGO_TARGET_DIR) : path.join(REPO, 'target');
  return path.join(target, 'debug', 'switchboard');
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitForHttp(url, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer().catch(() => {});
      return res.status;
    } catch (err) {
      last = err?.cause?.code || err?.message || String(err);
    }
    await sleep(100);
  }
  throw new Error(`server did not answer HTTP at ${url} within ${timeoutMs / 1000} s (${last})`);
}

function collectLines(stream, sink, prefix) {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      pushLine(sink, `${prefix}: ${buf.slice(0, i)}`);
      buf = buf.slice(i + 1);
    }
  });
  stream.on('end', () => { if (buf) pushLine(sink, `${prefix}: ${buf}`); });
}

function pushLine(sink, line) {
  sink.push(line);
  if (sink.length > 2000) sink.splice(0, sink.length - 1000);
  if (VERBOSE) console.log(line);
}

function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
