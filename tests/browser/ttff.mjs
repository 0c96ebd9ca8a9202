// Time to first frame (TTFF) for WHEP viewers in headless Chromium, and whether the video then
// plays on smoothly. Two scenarios, one room each:
//
//   a) "pli": a Chromium page publishes its fake camera over WHIP (a publisher that answers PLI);
//   b) "obs": FFmpeg (VP8, keyframe every 8 s) -> examples/rtp_to_whip (an OBS-like WHIP publisher
//      that never answers PLI/FIR) -> the server.
//
// In each, N viewers join one after another at random moments spread over more than one keyframe
// interval, each a fresh RTCPeerConnection (recvonly video + audio) in a Chromium page. TTFF is the
// time from just before the `fetch()` POST /whep/ROOM to the first decoded video frame (inbound-rtp
// framesDecoded > 0, getStats polled every ~10 ms; the report's own timestamp is used, since
// Chromium caches stats for a few tens of ms, so this is an upper bound; the exact time the
// first frame leaves the decoder (MediaStreamTrackProcessor) and reaches the screen
// (requestVideoFrameCallback) are printed beside it). Each viewer then stays HOLD_MS and must play
// on: framesDecoded rising; no freeze > 200 ms (the largest gap between frames leaving the decoder,
// and Chromium's freezeCount/totalFreezesDuration); no decode errors (every frame received 300 ms
// before the end decoded or dropped by the end, no PLI after the first frame, keyFramesDecoded >= 1).
//
// Checks: a) p95 <= 300 ms, b) p95 <= 500 ms, and smoothness for each: "N passed, M failed".
// Also printed, to explain a failure: per-viewer timing (answer, ICE/DTLS, the server's replay of
// its keyframe cache from the server log), jitter-buffer and on-screen latency, what happened during
// each gap (other viewers' replays, keyframes, pauses of FFmpeg itself), CPU per process group
// (a busy test machine shows up as "other"), and UDP receive-buffer drops per socket.
//
//   cargo build && cargo build --example rtp_to_whip && node tests/browser/ttff.mjs
//
// Env:
//   SWITCHBOARD_BIN   server binary (default target/debug/switchboard, or $CARGO_TARGET_DIR/debug)
//   RTP_TO_WHIP       publisher example (default target/debug/examples/rtp_to_whip)
//   CHROMIUM          browser (default /usr/bin/chromium);  FFMPEG  (default ffmpeg)
//   TTFF_VIEWERS      viewers per scenario (default 20)
//   TTFF_SPREAD_MS    joins spread over this long (default 9000; the OBS-like GOP is 8 s)
//   TTFF_HOLD_MS      how long each viewer stays after its first frame (default 3000)
//   TTFF_SCENARIOS    comma list of pli,obs (default both)
//   TTFF_PLI_WARMUP_MS how long the Chromium publisher streams before the first viewer (default 1500)
//   TTFF_OBS_CODEC    vp8 (default) or h264 for scenario b
//   TTFF_OBS_BITRATE  FFmpeg video bitrate for scenario b (default 800k; OBS's own default is 2500k)
//   TTFF_OBS_SIZE     FFmpeg picture size for scenario b (default 640x360)
//   TTFF_SEED         seed for the join moments (default: random; printed)
//   TTFF_JSON         if set, write every sample and stat there
//   TTFF_NICE         0 = do not run FFmpeg and rtp_to_whip at nice -10 (default: do, when root)
//   RUST_LOG          server log filter (default info,switchboard=debug: the per-viewer replay lines)
//   SWITCHBOARD_NETNS 0 = do not isolate in a private network namespace (default: isolate when possible)
//   VERBOSE           1 = echo server, publisher and browser logs
//
// Only loopback: the server binds and announces 127.0.0.1, FFmpeg sends to 127.0.0.1, and when
// `unshare --net` works (root on Linux) everything runs in a fresh network namespace with only `lo`.
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { existsSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { binary, closeBrowser, isolated as inNetns, launchChromium, logging, once, reexecInNetns, sleep, startServer, stopChild, VERBOSE } from './lib.mjs';

const SELF = fileURLToPath(import.meta.url);

const HARD_TIMEOUT_MS = 150_000; // the whole run, whatever happens
const N_VIEWERS = intEnv('TTFF_VIEWERS', 20);
const SPREAD_MS = intEnv('TTFF_SPREAD_MS', 9000);
const HOLD_MS = intEnv('TTFF_HOLD_MS', 3000);
const PLI_WARMUP_MS = intEnv('TTFF_PLI_WARMUP_MS', 1500);
const FIRST_FRAME_TIMEOUT_MS = 10_000; // a viewer with no frame by then counts as TTFF = timeout
const POLL_MS = 10;
const FREEZE_MS = 200;
const DECODE_SLACK_FRAMES = 2;
const TARGET_P95 = { pli: 300, obs: 500 };
const OBS_GOP_FRAMES = 240; // 8 s at 30 fps
const SCENARIOS = (process.env.TTFF_SCENARIOS || 'pli,obs').split(',').map((s) => s.trim()).filter(Boolean);
const OBS_CODEC = (process.env.TTFF_OBS_CODEC || 'vp8').toLowerCase();
const OBS_BITRATE = process.env.TTFF_OBS_BITRATE || '800k';
const OBS_SIZE = process.env.TTFF_OBS_SIZE || '640x360';

// On top of lib.mjs's flags: many viewers in background-ish headless pages: never throttle their
// timers or media.
const CHROMIUM_EXTRA_ARGS = [
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

function intEnv(name, dflt) {
  const v = Number.parseInt(process.env[name] ?? '', 10);
  return Number.isFinite(v) && v > 0 ? v : dflt;
}

const { log, pushLine, collectLines, watchPage } = logging('ttff', 20000);

// Stage 0 (lib.mjs): isolate in a private network namespace (only `lo`) when we can, by re-running
// ourselves.
if (!reexecInNetns({ self: SELF, tag: 'ttff', log, hardTimeoutMs: HARD_TIMEOUT_MS, failLine: `0 passed, ${SCENARIOS.length * 2} failed` })) {
  await main();
}

// ---------------------------------------------------------------------------------------------
// The measurement
// ---------------------------------------------------------------------------------------------

async function main() {
  const isolated = inNetns();
  if (!isolated) log('network namespace isolation unavailable or disabled; relying on loopback-only addresses');
  for (const s of SCENARIOS) {
    if (!(s in TARGET_P95)) {
      console.error(`[ttff] unknown scenario ${s} (use pli,obs)`);
      process.exit(2);
    }
  }

  const children = new Set(); // every process we started, to kill in finally
  const serverLog = [];
  const otherLog = [];
  let browser = null;
  let cleaningUp = null;
  const checks = []; // { name, ok, detail }
  const results = {};

  const cleanup = async () => {
    if (cleaningUp) return cleaningUp;
    cleaningUp = (async () => {
      await closeBrowser(browser);
      for (const c of children) await stopChild(c);
    })();
    return cleaningUp;
  };
  const dumpLogs = () => {
    console.error('----- publisher/ffmpeg/page log (last 60 lines) -----');
    for (const l of otherLog.slice(-60)) console.error(l);
    console.error('----- server log (last 60 lines) -----');
    for (const l of serverLog.slice(-60)) console.error(l);
    console.error('-----');
  };
  const hardTimer = setTimeout(() => {
    console.error(`[ttff] FAIL: hard timeout after ${HARD_TIMEOUT_MS / 1000} s`);
    dumpLogs();
    for (const c of children) try { c.kill('SIGKILL'); } catch { /* gone */ }
    console.log(`0 passed, ${SCENARIOS.length * 2} failed`);
    process.exit(1);
  }, HARD_TIMEOUT_MS);
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, async () => { await cleanup(); console.log(`0 passed, ${SCENARIOS.length * 2} failed`); process.exit(1); });
  }

  const seed = intEnv('TTFF_SEED', Math.floor(Math.random() * 2 ** 31));
  const rand = mulberry32(seed);
  const started = Date.now();
  let fatal = null;
  try {
    // ----- server -----
    const { server, base } = await startServer({
      log, collectLines, sink: serverLog, rustLog: 'info,switchboard=debug', env: { RUST_LOG_STYLE: 'never' },
      readyPath: '/healthz', timeoutMs: 20_000, onSpawn: (child) => children.add(child),
    });
    log(`server answers at ${base}; seed ${seed}; ${N_VIEWERS} viewers per scenario over ${SPREAD_MS} ms, each held ${HOLD_MS} ms`);

    // ----- browser -----
    browser = await launchChromium({ isolated, extraArgs: CHROMIUM_EXTRA_ARGS });
    log(`launched Chromium ${browser.version()}`);
    const viewCtx = await browser.newContext(); // plain viewers: no camera permission
    const viewerPage = await viewCtx.newPage();
    watchPage(viewerPage, 'viewers', otherLog);
    await viewerPage.goto(`${base}/healthz`, { timeout: 10_000 }); // same origin as /whep

    for (const scenario of SCENARIOS) {
      const room = `ttff-${scenario}`;
      let publisher = null;
      if (scenario === 'pli') publisher = await startBrowserPublisher(browser, base, room, otherLog);
      else publisher = await startObsPublisher(base, room, children, otherLog);
      const cpu = cpuSampler({
        server: server.pid,
        chromium: process.pid, // Chromium is our child; the nearest known ancestor wins, and node itself is 'node'
        ffmpeg: publisher.ffmpegPid,
        rtp_to_whip: publisher.pubPid,
      });
      const udpBefore = udpCounters();
      try {
        cpu.start();
        const viewers = await runViewers(viewerPage, room, rand, serverLog, publisher);
        const load = cpu.stop();
        if (publisher.snapshot) await publisher.snapshot();
        results[scenario] = summarize(scenario, viewers, publisher);
        results[scenario].cpu = load;
        const udpAfter = udpCounters();
        if (udpBefore && udpAfter) {
          const d = Object.fromEntries(Object.keys(udpAfter).map((k) => [k, udpAfter[k] - udpBefore[k]]));
          results[scenario].udp = d;
          log(`${scenario}: UDP in this network namespace during the scenario: ${d.InDatagrams} datagrams in, receive-buffer overflows (RcvbufErrors) ${d.RcvbufErrors}, send-buffer errors ${d.SndbufErrors}${isolated ? '' : ' (whole host: not isolated)'}`);
          for (const x of load.drops || []) log(`${scenario}:   socket 127.0.0.1:${x.port} of ${x.owner} dropped ${x.drops} datagrams (receive buffer full)`);
        }
        if ((load.groups.other?.mean ?? 0) > 25) {
          log(`${scenario}: WARNING: processes outside this test used ${load.groups.other.mean}% of a core on average (max ${load.groups.other.max}%): stalls in this run may be the machine's, not the server's`);
        }
        log(`${scenario}: CPU while viewers joined (% of one core, mean/max over 250 ms samples; ${load.cores} cores): ${Object.entries(load.groups).map(([k, v]) => `${k} ${v.mean}/${v.max}`).join(', ')}; whole machine busy ${load.machine.mean}/${load.machine.max} % of all cores`);
      } finally {
        cpu.stop();
        await publisher.stop();
      }
    }
  } catch (err) {
    fatal = err?.message || String(err);
    console.error(`[ttff] FAIL: ${fatal}`);
    dumpLogs();
  } finally {
    await cleanup();
    clearTimeout(hardTimer);
  }

  // ----- verdict -----
  for (const scenario of SCENARIOS) {
    const r = results[scenario];
    const target = TARGET_P95[scenario];
    if (!r) {
      checks.push({ name: `${scenario}: TTFF p95 <= ${target} ms`, ok: false, detail: fatal || 'not measured' });
      checks.push({ name: `${scenario}: smooth playback`, ok: false, detail: fatal || 'not measured' });
      continue;
    }
    checks.push({
      name: `${scenario}: TTFF p95 <= ${target} ms`,
      ok: r.p95 <= target,
      detail: `p95 ${fmt(r.p95)} ms`,
    });
    checks.push({
      name: `${scenario}: smooth playback`,
      ok: r.smoothFailures.length === 0,
      detail: r.smoothFailures.length ? r.smoothFailures.join('; ') : `all ${r.n} viewers`,
    });
  }
  if (process.env.TTFF_JSON) {
    writeFileSync(process.env.TTFF_JSON, JSON.stringify({ seed, results }, null, 2));
    log(`wrote ${process.env.TTFF_JSON}`);
  }
  console.log('');
  for (const c of checks) console.log(`[ttff] ${c.ok ? 'PASS' : 'FAIL'} ${c.name}: ${c.detail}`);
  const passed = checks.filter((c) => c.ok).length;
  log(`total run ${((Date.now() - started) / 1000).toFixed(1)} s`);
  console.log(`${passed} passed, ${checks.length - passed} failed`);
  process.exit(passed === checks.length ? 0 : 1);
}

// ----- publishers -----

async function startBrowserPublisher(browser, base, room, sink) {
  const ctx = await browser.newContext({ permissions: ['camera', 'microphone'] });
  const page = await ctx.newPage();
  watchPage(page, 'publisher', sink);
  await page.goto(`${base}/?room=${room}&mode=publish&autostart=1`, { timeout: 10_000 });
  const deadline = Date.now() + 20_000;
  let st = null;
  while (Date.now() < deadline) {
    st = await page.evaluate(() => ({ state: window.switchboard?.state, lastError: window.switchboard?.lastError }));
    if (st.lastError) throw new Error(`publisher page: ${st.lastError}`);
    if (st.state === 'connected') break;
    await sleep(100);
  }
  if (st?.state !== 'connected') throw new Error(`the Chromium publisher never connected (state ${st?.state})`);
  // Let the encoder leave its start-up ramp (bitrate/resolution) before viewers come. A longer
  // warm-up (TTFF_PLI_WARMUP_MS) shows a publisher that has been live for a while: Chromium sends
  // keyframes only when asked, so its group of pictures (and the server's cache) keeps growing.
  await sleep(PLI_WARMUP_MS);
  const stats = () => page.evaluate(async () => {
    const s = await window.switchboard.pc.getStats();
    let out = null;
    s.forEach((r) => {
      if (r.type === 'outbound-rtp' && r.kind === 'video') {
        out = { framesEncoded: r.framesEncoded, keyFramesEncoded: r.keyFramesEncoded, pliCount: r.pliCount, firCount: r.firCount, frameWidth: r.frameWidth, frameHeight: r.frameHeight, framesPerSecond: r.framesPerSecond, targetBitrate: r.targetBitrate };
      }
    });
    return out;
  });
  const before = await stats();
  log(`pli: Chromium publisher connected in room ${room}: ${JSON.stringify(before)}`);
  return {
    kind: 'pli',
    keyframes: [],
    before,
    after: null,
    async snapshot() {
      this.after = await stats().catch(() => null);
    },
    async stop() {
      await page.evaluate(() => window.switchboard.stop()).catch(() => {});
      await ctx.close().catch(() => {});
    },
  };
}

async function startObsPublisher(base, room, children, sink) {
  const exe = binary('RTP_TO_WHIP', path.join('examples', 'rtp_to_whip'));
  if (!existsSync(exe)) throw new Error(`${exe} not found (run \`cargo build --example rtp_to_whip\` or set RTP_TO_WHIP)`);
  const [vport, aport] = await freeUdpPorts(2);
  const pubLines = [];
  const keyframes = [];
  const sourceStalls = []; // pauses in what FFmpeg sends (a CPU-starved encoder), not the server's doing
  let connected = null;
  let firstKeyframe = null;
  const onConnected = new Promise((resolve) => { connected = resolve; });
  const onKeyframe = new Promise((resolve) => { firstKeyframe = resolve; });
  const pubArgs = ['--whip', `${base}/whip/${room}`, '--rtp-port', String(vport), '--audio-rtp-port', String(aport), '--codec', OBS_CODEC, '--log-keyframes', '--log-gaps', '120'];
  log(`obs: starting ${exe} ${pubArgs.join(' ')}`);
  const pub = spawn(...niced(exe, pubArgs), { stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(pub);
  const pubExit = once(pub, 'exit');
  collectLines(pub.stdout, pubLines, 'rtp_to_whip', (line) => {
    pushLine(sink, line);
    pubLines.push(line);
    if (line.includes('connected in')) connected();
    const m = /keyframe at (\d+)/.exec(line);
    if (m) {
      keyframes.push(Number(m[1]));
      firstKeyframe();
    }
    const g = /input gap (\d+) ms .*ended at (\d+)/.exec(line);
    if (g) sourceStalls.push({ ms: Number(g[1]), endUnixMs: Number(g[2]) });
  });
  collectLines(pub.stderr, sink, 'rtp_to_whip');
  await Promise.race([
    onConnected,
    pubExit.then(([code]) => { throw new Error(`rtp_to_whip exited (code ${code}) before connecting: ${sink.slice(-5).join(' | ')}`); }),
    sleep(15_000).then(() => { throw new Error('rtp_to_whip did not connect within 15 s'); }),
  ]);

  const ffmpeg = process.env.FFMPEG || 'ffmpeg';
  const video = OBS_CODEC === 'h264'
    ? ['-c:v', 'libx264', '-preset', 'veryfast', '-tune', 'zerolatency', '-profile:v', 'baseline', '-bf', '0', '-g', String(OBS_GOP_FRAMES),
       '-x264-params', `keyint=${OBS_GOP_FRAMES}:min-keyint=${OBS_GOP_FRAMES}:scenecut=0`, '-b:v', OBS_BITRATE, '-payload_type', '96']
    : ['-c:v', 'libvpx', '-deadline', 'realtime', '-cpu-used', '8', '-g', String(OBS_GOP_FRAMES), '-keyint_min', String(OBS_GOP_FRAMES), '-b:v', OBS_BITRATE];
  const ffArgs = [
    '-hide_banner', '-loglevel', 'error', '-nostdin',
    '-re', '-f', 'lavfi', '-i', `testsrc2=size=${OBS_SIZE}:rate=30`,
    '-re', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-map', '0:v', ...video, '-pkt_size', '1200', '-f', 'rtp', `rtp://127.0.0.1:${vport}`,
    '-map', '1:a', '-c:a', 'libopus', '-b:a', '64k', '-ac', '2', '-pkt_size', '1200', '-f', 'rtp', `rtp://127.0.0.1:${aport}`,
  ];
  log(`obs: ${ffmpeg} ${ffArgs.join(' ')}`);
  const ff = spawn(...niced(ffmpeg, ffArgs), { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(ff);
  collectLines(ff.stdout, sink, 'ffmpeg');
  collectLines(ff.stderr, sink, 'ffmpeg');
  await Promise.race([
    onKeyframe,
    once(ff, 'exit').then(([code]) => { throw new Error(`ffmpeg exited (code ${code}): ${sink.slice(-5).join(' | ')}`); }),
    sleep(15_000).then(() => { throw new Error('no keyframe from ffmpeg within 15 s'); }),
  ]);
  // A few frames after the first keyframe so the cache holds a group of pictures.
  await sleep(500);
  log(`obs: publisher connected in room ${room}, first keyframe sent; GOP ${OBS_GOP_FRAMES} frames (8 s), PLI ignored`);
  return {
    kind: 'obs',
    ffmpegPid: ff.pid,
    pubPid: pub.pid,
    keyframes,
    sourceStalls,
    pubLines,
    async stop() {
      await stopChild(ff);
      children.delete(ff);
      try { pub.stdin.end(); } catch { /* gone */ } // stdin closing: it DELETEs its session and exits
      const exited = await Promise.race([pubExit.then(() => true), sleep(5000).then(() => false)]);
      if (!exited) await stopChild(pub);
      children.delete(pub);
      const del = pubLines.find((l) => l.includes('DELETE'));
      const stopLine = pubLines.find((l) => l.includes('stopping'));
      if (stopLine) log(`obs: publisher ${stopLine.replace(/^rtp_to_whip: /, '')}`);
      if (del) log(`obs: publisher ${del.replace(/^rtp_to_whip: /, '')}`);
    },
  };
}

// ----- viewers -----

async function runViewers(page, room, rand, serverLog, publisher) {
  const offsets = Array.from({ length: N_VIEWERS }, () => Math.round(rand() * SPREAD_MS)).sort((a, b) => a - b);
  log(`${publisher.kind}: ${N_VIEWERS} viewers join at +${offsets.join(', +')} ms`);
  const t0 = Date.now();
  const runs = offsets.map((offset, i) => (async () => {
    const wait = t0 + offset - Date.now();
    if (wait > 0) await sleep(wait);
    const r = await page.evaluate(viewerInPage, {
      id: i, room, holdMs: HOLD_MS, pollMs: POLL_MS, firstFrameTimeoutMs: FIRST_FRAME_TIMEOUT_MS,
    }).catch((e) => ({ id: i, error: `evaluate: ${e.message}` }));
    r.offset = offset;
    if (VERBOSE || r.error) log(`${publisher.kind} viewer ${i}: ${r.error ? `ERROR ${r.error}` : `TTFF ${fmt(r.ttff)} ms`}`);
    return r;
  })());
  const viewers = await Promise.all(runs);
  // Server-side timing of each viewer, from the server's log (same clock as the page's Date.now()).
  for (const v of viewers) {
    if (!v.session) continue;
    v.server = serverTimes(serverLog, v.session, v.postUnixMs);
    if (publisher.keyframes.length && v.postUnixMs) {
      const before = publisher.keyframes.filter((k) => k <= v.postUnixMs);
      v.gopPhaseMs = before.length ? v.postUnixMs - before[before.length - 1] : null;
    }
  }
  return viewers;
}

// Runs in the viewer page: one viewer from POST to hang-up. Self-contained (serialized by Playwright).
async function viewerInPage({ id, room, holdMs, pollMs, firstFrameTimeoutMs }) {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const out = { id, marks: {}, samples: 0 };
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  const video = document.createElement('video');
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  video.width = 160;
  document.body.appendChild(video);
  let location = null;
  // Frame delivery times straight from the decoder (precise, unlike cached getStats).
  const frameTimes = [];
  const presented = []; // requestVideoFrameCallback: { at, recv, rtp }
  let closed = false;
  let reader = null;
  const stopReading = () => { try { reader?.cancel(); } catch { /* done */ } };
  pc.ontrack = (e) => {
    if (e.track.kind !== 'video') return;
    video.srcObject = new MediaStream([e.track]);
    video.play().catch(() => {});
    // Frames the compositor actually presents, with the receive time of each (WebRTC metadata).
    if (typeof video.requestVideoFrameCallback === 'function') {
      const onFrame = (now, md) => {
        if (closed) return;
        presented.push({ at: md.presentationTime ?? now, recv: md.receiveTime ?? null, rtp: md.rtpTimestamp ?? null });
        video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
    }
    if (typeof MediaStreamTrackProcessor === 'function') {
      try {
        reader = new MediaStreamTrackProcessor({ track: e.track }).readable.getReader();
        (async () => {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            frameTimes.push(performance.now());
            value.close();
          }
        })().catch(() => {});
      } catch { /* not available: stats only */ }
    }
  };
  let lastReportTs = null; // the timestamp of the last report, with or without inbound-rtp video
  const inbound = async (receiver) => {
    const report = await receiver.getStats();
    let v = null;
    report.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video') v = r;
      if (lastReportTs == null || r.timestamp > lastReportTs) lastReportTs = r.timestamp;
    });
    return v;
  };
  const pick = (s) => s && ({
    timestamp: s.timestamp, packetsReceived: s.packetsReceived, packetsLost: s.packetsLost, framesReceived: s.framesReceived,
    framesDecoded: s.framesDecoded, keyFramesDecoded: s.keyFramesDecoded, framesDropped: s.framesDropped,
    framesAssembledFromMultiplePackets: s.framesAssembledFromMultiplePackets,
    freezeCount: s.freezeCount, totalFreezesDuration: s.totalFreezesDuration, pauseCount: s.pauseCount,
    totalPausesDuration: s.totalPausesDuration, jitterBufferDelay: s.jitterBufferDelay,
    jitterBufferEmittedCount: s.jitterBufferEmittedCount, jitterBufferTargetDelay: s.jitterBufferTargetDelay,
    jitterBufferMinimumDelay: s.jitterBufferMinimumDelay, totalDecodeTime: s.totalDecodeTime,
    totalInterFrameDelay: s.totalInterFrameDelay, totalSquaredInterFrameDelay: s.totalSquaredInterFrameDelay,
    totalProcessingDelay: s.totalProcessingDelay, nackCount: s.nackCount, pliCount: s.pliCount, firCount: s.firCount,
    framesPerSecond: s.framesPerSecond, frameWidth: s.frameWidth, frameHeight: s.frameHeight, jitter: s.jitter,
    decoderImplementation: s.decoderImplementation,
  });
  try {
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.oniceconnectionstatechange = () => {
      if (pc.iceConnectionState === 'connected' && out.marks.iceConnected == null) out.marks.iceConnected = performance.now() - t0;
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'connected' && out.marks.connected == null) out.marks.connected = performance.now() - t0;
    };
    await pc.setLocalDescription(await pc.createOffer());
    // ----- the clock starts just before the POST -----
    var t0 = performance.now(); // eslint-disable-line no-var
    out.postUnixMs = performance.timeOrigin + t0;
    const res = await fetch(`/whep/${room}`, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
    const answer = await res.text();
    out.marks.answer = performance.now() - t0;
    if (res.status !== 201) throw new Error(`POST /whep/${room}: ${res.status} ${answer.slice(0, 200)}`);
    location = res.headers.get('Location');
    out.session = location ? location.split('/').pop() : null;
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    out.marks.remoteSet = performance.now() - t0;
    const receiver = pc.getReceivers().find((r) => r.track.kind === 'video');
    // ----- until the first decoded frame -----
    let prev = null;
    let first = null;
    let zeroTs = null; // the newest report that had no decoded frame yet
    while (performance.now() - t0 < firstFrameTimeoutMs) {
      const before = lastReportTs;
      const s = await inbound(receiver);
      if (!s && lastReportTs != null && lastReportTs !== before) zeroTs = lastReportTs;
      out.samples++;
      if (s) {
        // When the report was made, relative to the POST (RTCStats timestamps are on the Unix-epoch
        // clock in Chromium; fall back to our own clock if that ever changes).
        const statsClock = Math.abs(s.timestamp - (performance.timeOrigin + performance.now())) < 5000;
        const at = statsClock ? s.timestamp - out.postUnixMs : performance.now() - t0;
        out.statsClock = statsClock;
        if (s.packetsReceived > 0 && out.marks.firstPacketBy == null) out.marks.firstPacketBy = at;
        if (s.framesReceived > 0 && out.marks.firstFrameReceivedBy == null) out.marks.firstFrameReceivedBy = at;
        if (s.framesDecoded > 0) {
          first = s;
          out.ttff = at; // an upper bound: decoded at or before the report
          out.ttffLowerBound = statsClock && zeroTs != null ? Math.max(0, zeroTs - out.postUnixMs) : 0;
          out.ttffPolled = performance.now() - t0;
          break;
        }
        prev = s;
        zeroTs = s.timestamp;
      }
      await sleep(pollMs);
    }
    if (frameTimes.length) out.ttffTrack = frameTimes[0] - t0;
    if (!first) {
      out.ttff = null;
      out.error = `no decoded frame within ${firstFrameTimeoutMs} ms (packets ${prev?.packetsReceived ?? 0}, frames received ${prev?.framesReceived ?? 0})`;
      out.end = pick(await inbound(receiver));
      return out;
    }
    out.first = pick(first);
    // ----- then hold, watching it play -----
    const holdStart = performance.now();
    let lastDecoded = first.framesDecoded;
    let lastChangeAt = first.timestamp;
    let maxStatsGap = 0;
    let last = first;
    let steady = null; // the last sample at least 1 s before the end: live playback from there on
    const hist = [first];
    while (performance.now() - holdStart < holdMs) {
      await sleep(pollMs);
      const s = await inbound(receiver);
      out.samples++;
      if (!s || s.timestamp === last.timestamp) continue; // a cached report: nothing new
      if (s.framesDecoded > lastDecoded) {
        maxStatsGap = Math.max(maxStatsGap, s.timestamp - lastChangeAt);
        lastDecoded = s.framesDecoded;
        lastChangeAt = s.timestamp;
      }
      if (performance.now() - holdStart <= holdMs - 1000) steady = s;
      hist.push(s);
      last = s;
    }
    maxStatsGap = Math.max(maxStatsGap, last.timestamp - lastChangeAt);
    // Does Chromium hand out a cached report? (two calls 5 ms apart with the same timestamp)
    {
      const a = await inbound(receiver);
      await sleep(5);
      const b = await inbound(receiver);
      out.statsCached = a && b ? a.timestamp === b.timestamp : null;
    }
    out.end = pick(last);
    out.steady = pick(steady);
    // The last sample 300+ ms before the end: every frame received by then must be decoded or dropped by the end.
    out.settled = pick([...hist].reverse().find((h) => h.timestamp <= last.timestamp - 300) || first);
    out.maxStatsGapMs = maxStatsGap;
    out.holdMs = last.timestamp - first.timestamp;
    // Frame gaps seen by the track sink, from the first frame on.
    if (frameTimes.length > 1) {
      let maxGap = 0;
      let maxGapEnd = null;
      // The replayed group comes out of the decoder back to back; the first pause of more than
      // 12 ms ends it: from there on the picture is live.
      let burst = 0;
      for (let i = 1; i < frameTimes.length; i++) {
        const g = frameTimes[i] - frameTimes[i - 1];
        if (g > maxGap) { maxGap = g; maxGapEnd = frameTimes[i]; }
        if (!burst && g > 12) burst = i;
      }
      out.catchUpMs = frameTimes[Math.max(0, burst - 1)] - t0; // last replayed frame decoded
      const tail = performance.now() - frameTimes[frameTimes.length - 1];
      if (tail > maxGap) { maxGap = tail; maxGapEnd = performance.now(); }
      out.maxTrackGapMs = maxGap;
      out.maxGapEndUnixMs = performance.timeOrigin + maxGapEnd;
      out.trackFrames = frameTimes.length;
      out.burstFrames = burst; // frames decoded back to back from the first one (the replayed group)
      out.trackFps = (frameTimes.length - 1) / ((frameTimes[frameTimes.length - 1] - frameTimes[0]) / 1000);
    }
    // What the compositor presented: first frame on screen, the longest pause on screen, and the
    // receive-to-presentation latency of live frames (last second).
    if (presented.length) {
      out.firstPresented = presented[0].at - t0;
      let maxGap = 0;
      for (let i = 1; i < presented.length; i++) maxGap = Math.max(maxGap, presented[i].at - presented[i - 1].at);
      out.maxPresentedGapMs = maxGap;
      out.presentedFrames = presented.length;
      const end = presented[presented.length - 1].at;
      const lat = presented.filter((f) => f.recv != null && f.at > end - 1000).map((f) => f.at - f.recv);
      if (lat.length) {
        lat.sort((a, b) => a - b);
        out.presentLatencyMs = lat[Math.floor(lat.length / 2)];
      }
    }
    return out;
  } catch (e) {
    out.error = e.message || String(e);
    return out;
  } finally {
    closed = true;
    stopReading();
    pc.close();
    video.remove();
    if (location) await fetch(location, { method: 'DELETE' }).catch(() => {});
  }
}

// ----- analysis -----

function summarize(scenario, viewers, publisher) {
  const n = viewers.length;
  const ttffs = viewers.map((v) => (v.ttff == null ? FIRST_FRAME_TIMEOUT_MS : v.ttff));
  const sorted = [...ttffs].sort((a, b) => a - b);
  const p50 = percentile(sorted, 50);
  const p95 = percentile(sorted, 95);
  const max = sorted[sorted.length - 1];
  const smoothFailures = [];
  const rows = [];
  for (const v of viewers) {
    const problems = [];
    if (v.error) problems.push(v.error);
    const f = v.first;
    const e = v.end;
    if (f && e) {
      const decodedDuringHold = e.framesDecoded - f.framesDecoded;
      if (decodedDuringHold <= 0) problems.push('framesDecoded stopped rising');
      const freezes = (e.freezeCount ?? 0) - (f.freezeCount ?? 0);
      const freezeDur = ((e.totalFreezesDuration ?? 0) - (f.totalFreezesDuration ?? 0)) * 1000;
      // Chromium counts a freeze from max(3 x mean frame interval, mean + 150 ms), ~183 ms at
      // 30 fps; the requirement is no freeze longer than 200 ms.
      const gap = v.maxTrackGapMs ?? v.maxStatsGapMs;
      if (gap > FREEZE_MS) problems.push(`a ${gap.toFixed(0)} ms gap between decoded frames${gapCauses(v, viewers, publisher.keyframes, publisher.sourceStalls)}`);
      if (freezes > 0 && freezeDur / freezes > FREEZE_MS) problems.push(`${freezes} freeze(s) totalling ${freezeDur.toFixed(0)} ms (Chromium freezeCount)`);
      else if (freezes > 0) v.shortFreezes = `${freezes} freeze(s) totalling ${freezeDur.toFixed(0)} ms`;
      // A frame received 300 ms before the end must be decoded or dropped by the end; what is
      // missing then was not decodable. (Frames still queued in a busy decoder are not counted.)
      const ref = v.settled || e;
      const undecoded = ref.framesReceived - e.framesDropped - e.framesDecoded;
      if (undecoded > DECODE_SLACK_FRAMES) problems.push(`${undecoded} frames received 300+ ms before the end neither decoded nor dropped (decode errors?)`);
      if (e.pliCount > f.pliCount) problems.push(`${e.pliCount - f.pliCount} PLI(s) sent after the first frame (the decoder lost its references)`);
      if (!(e.keyFramesDecoded >= 1)) problems.push('no keyframe decoded');
    }
    if (problems.length) smoothFailures.push(`viewer ${v.id} (+${v.offset} ms): ${problems.join(', ')}`);
    rows.push(row(v, problems));
  }
  const mean = (xs) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
  const ok = viewers.filter((v) => v.first && v.end);
  const jb = ok.map((v) => steadyJb(v).delay).filter(Number.isFinite);
  const jbTarget = ok.map((v) => steadyJb(v).target).filter(Number.isFinite);
  const firstJb = ok.map((v) => (v.first.jitterBufferEmittedCount > 0 ? (v.first.jitterBufferDelay / v.first.jitterBufferEmittedCount) * 1000 : NaN)).filter(Number.isFinite);
  const summary = {
    scenario, n, p50, p95, max, min: sorted[0], smoothFailures,
    ttffTrack: percentiles(viewers.map((v) => v.ttffTrack).filter((x) => x != null)),
    connected: percentiles(viewers.map((v) => v.marks?.connected).filter((x) => x != null)),
    answer: percentiles(viewers.map((v) => v.marks?.answer).filter((x) => x != null)),
    firstPacketBy: percentiles(viewers.map((v) => v.marks?.firstPacketBy).filter((x) => x != null)),
    serverConnected: percentiles(viewers.map((v) => v.server?.connected).filter((x) => x != null)),
    serverFirstMedia: percentiles(viewers.map((v) => v.server?.firstMedia).filter((x) => x != null)),
    catchUp: percentiles(viewers.map((v) => v.catchUpMs).filter((x) => x != null)),
    firstPresented: percentiles(viewers.map((v) => v.firstPresented).filter((x) => x != null)),
    presentLatency: percentiles(viewers.map((v) => v.presentLatencyMs).filter((x) => x != null)),
    maxPresentedGap: percentiles(viewers.map((v) => v.maxPresentedGapMs).filter((x) => x != null)),
    meanLiveJitterBufferMs: mean(jb),
    maxLiveJitterBufferMs: jb.length ? Math.max(...jb) : NaN,
    meanLiveJitterTargetMs: mean(jbTarget),
    meanFirstJitterBufferMs: mean(firstJb),
    publisher: { before: publisher.before ?? null, after: publisher.after ?? null, keyframes: publisher.keyframes.length },
    viewers,
  };

  console.log('');
  log(`===== scenario ${scenario} (${scenario === 'pli' ? 'Chromium publisher, answers PLI' : `FFmpeg ${OBS_CODEC.toUpperCase()} ${OBS_SIZE} ${OBS_BITRATE}bps 8 s GOP -> rtp_to_whip, ignores PLI`}) =====`);
  console.log(['  #', 'join+ms', 'gop', 'ttff', '(bounds)', 'track1st', 'answer', 'conn', 'srvConn', 'srvMedia', 'replay', 'burst', 'kf', 'dec/rcv/drop', 'fps', 'maxGap', 'frz', 'jb1st', 'jbLive', 'jbTgt', 'scr1st', 'scrGap', 'rcv2scr', 'pli', 'nack', 'result'].join('\t'));
  for (const r of rows) console.log(r);
  log(`${scenario}: TTFF p50 ${fmt(p50)} ms, p95 ${fmt(p95)} ms, max ${fmt(max)} ms, min ${fmt(sorted[0])} ms (target p95 <= ${TARGET_P95[scenario]} ms)`);
  log(`${scenario}: breakdown (p50/p95 ms after the POST): answer ${pp(summary.answer)}, server "connected" ${pp(summary.serverConnected)}, server first video out ${pp(summary.serverFirstMedia)}, page connected ${pp(summary.connected)}, first packet by ${pp(summary.firstPacketBy)}, first frame at the track sink ${pp(summary.ttffTrack)}`);
  log(`${scenario}: the replayed group (frames decoded back to back) is through by ${pp(summary.catchUp)} ms after the POST: from then on the picture is live (before, it fast-forwards through the cached seconds)`);
  log(`${scenario}: jitter buffer: first frame(s) ${fmt(summary.meanFirstJitterBufferMs)} ms; live frames in the last second of the hold: mean ${fmt(summary.meanLiveJitterBufferMs)} ms (max viewer ${fmt(summary.maxLiveJitterBufferMs)} ms), mean target ${fmt(summary.meanLiveJitterTargetMs)} ms`);
  const cachedProbe = viewers.filter((v) => v.statsCached != null);
  if (cachedProbe.length) log(`${scenario}: getStats() returned the same (cached) report for two calls 5 ms apart in ${cachedProbe.filter((v) => v.statsCached).length}/${cachedProbe.length} viewers: a stats-based TTFF is late by up to the cache age; the track-sink and on-screen times are exact`);
  log(`${scenario}: on screen (requestVideoFrameCallback): first frame presented ${pp(summary.firstPresented)} ms after the POST; receive-to-presentation latency of live frames ${pp(summary.presentLatency)} ms; longest pause on screen ${pp(summary.maxPresentedGap)} ms (p50/p95 over viewers)`);
  if (publisher.before) log(`${scenario}: publisher outbound video before ${JSON.stringify(publisher.before)} after ${JSON.stringify(publisher.after)}`);
  if (publisher.kind === 'obs') {
    log(`${scenario}: publisher sent ${publisher.keyframes.length} keyframes during the run`);
    const st = publisher.sourceStalls;
    log(`${scenario}: FFmpeg (the source) paused > 120 ms ${st.length} time(s)${st.length ? `: ${st.map((x) => `${x.ms} ms`).join(', ')} (a starved machine: these reach every viewer whatever the server does)` : ''}`);
  }
  log(`${scenario}: smoothness ${smoothFailures.length ? `FAILED for ${smoothFailures.length}/${n} viewers` : `ok for all ${n} viewers`}`);
  for (const f of smoothFailures) log(`  ${f}`);
  return summary;
}

function row(v, problems) {
  const f = v.first;
  const e = v.end;
  const jb1 = f && f.jitterBufferEmittedCount ? (f.jitterBufferDelay / f.jitterBufferEmittedCount) * 1000 : NaN;
  const jbLive = steadyJb(v).delay;
  const jbTarget = steadyJb(v).target;
  const holdFps = f && e && v.holdMs > 0 ? ((e.framesDecoded - f.framesDecoded) / v.holdMs) * 1000 : NaN;
  return [
    `  ${v.id}`,
    v.offset,
    fmt(v.gopPhaseMs),
    fmt(v.ttff),
    v.ttff == null ? '-' : `${fmt(v.ttffLowerBound)}..${fmt(v.ttff)}`,
    fmt(v.ttffTrack),
    fmt(v.marks?.answer),
    fmt(v.marks?.connected),
    fmt(v.server?.connected),
    fmt(v.server?.firstMedia),
    v.server?.replayed ?? '-',
    v.burstFrames ?? '-',
    e ? e.keyFramesDecoded : '-',
    e ? `${e.framesDecoded}/${e.framesReceived}/${e.framesDropped}` : '-',
    fmt(holdFps),
    fmt(v.maxTrackGapMs ?? v.maxStatsGapMs),
    e && f ? `${(e.freezeCount ?? 0) - (f.freezeCount ?? 0)}` : '-',
    fmt(jb1),
    fmt(jbLive),
    fmt(jbTarget),
    fmt(v.firstPresented),
    fmt(v.maxPresentedGapMs),
    fmt(v.presentLatencyMs),
    e ? e.pliCount : '-',
    e ? e.nackCount : '-',
    problems.length ? `FAIL: ${problems.join(', ')}` : 'ok',
  ].join('\t');
}

// Mean jitter-buffer delay and target delay (ms) per frame over the last second of the hold: the
// viewer's steady state once the replayed frames are behind it.
function steadyJb(v) {
  const a = v.steady;
  const b = v.end;
  if (!a || !b || !(b.jitterBufferEmittedCount > a.jitterBufferEmittedCount)) return { delay: NaN, target: NaN };
  const n = b.jitterBufferEmittedCount - a.jitterBufferEmittedCount;
  return {
    delay: ((b.jitterBufferDelay - a.jitterBufferDelay) / n) * 1000,
    target: ((b.jitterBufferTargetDelay - a.jitterBufferTargetDelay) / n) * 1000,
  };
}

// What happened shortly before a viewer's longest gap ended: other viewers' replays, keyframes.
function gapCauses(v, viewers, keyframes, stalls) {
  if (v.maxGapEndUnixMs == null) return '';
  const end = v.maxGapEndUnixMs;
  const start = end - (v.maxTrackGapMs ?? 0);
  const hits = [];
  for (const o of viewers) {
    const at = o.server?.replayedAt != null ? o.postUnixMs + o.server.replayedAt : null;
    if (at != null && at >= start - 150 && at <= end) hits.push(`viewer ${o.id} replay ${o.server.replayed} at gap+${Math.round(at - start)} ms`);
    else if (o.postUnixMs >= start - 150 && o.postUnixMs <= end && o.id !== v.id) hits.push(`viewer ${o.id} POST at gap+${Math.round(o.postUnixMs - start)} ms`);
  }
  for (const k of keyframes) if (k >= start - 150 && k <= end) hits.push(`publisher keyframe at gap+${Math.round(k - start)} ms`);
  for (const st of stalls || []) {
    const sStart = st.endUnixMs - st.ms;
    if (st.endUnixMs >= start - 50 && sStart <= end) hits.push(`FFmpeg itself sent nothing for ${st.ms} ms (gap+${Math.round(sStart - start)}..+${Math.round(st.endUnixMs - start)} ms)`);
  }
  return hits.length ? ` [during the gap: ${hits.join('; ')}]` : ' [no replay or keyframe during the gap]';
}

// Server log lines for one session, as ms after the viewer's POST (same machine clock).
function serverTimes(lines, session, postUnixMs) {
  const out = {};
  const at = (line) => {
    const m = /^server: (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z)/.exec(line);
    return m ? Date.parse(m[1]) + fracMs(m[1]) - postUnixMs : null;
  };
  for (const line of lines) {
    if (!line.includes(session)) continue;
    if (line.includes('session created') && out.created == null) out.created = at(line);
    else if (/\bconnected\b/.test(line) && line.includes('viewer') && out.connected == null) out.connected = at(line);
    else if (line.includes('keyframe cache replayed')) {
      out.replayedAt = at(line);
      const m = /packets=(\d+)/.exec(line);
      const w = /written=(\d+)/.exec(line);
      out.replayed = m ? `${m[1]}p${w && w[1] !== m[1] ? `/${w[1]}w` : ''}` : '?';
    } else if (line.includes('first video') && out.firstMedia == null) {
      out.firstMedia = at(line);
    }
  }
  if (out.firstMedia == null && out.replayedAt != null) out.firstMedia = out.replayedAt;
  return out;
}

// Date.parse keeps milliseconds only; add the sub-millisecond digits (for nothing but tidiness).
function fracMs(iso) {
  const m = /\.(\d+)Z$/.exec(iso);
  if (!m || m[1].length <= 3) return 0;
  return Number(`0.${m[1].slice(3)}`);
}

function percentile(sorted, p) {
  if (!sorted.length) return NaN;
  // nearest-rank
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

function percentiles(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: percentile(s, 50), p95: percentile(s, 95), n: s.length };
}

function pp(x) {
  return `${fmt(x.p50)}/${fmt(x.p95)}`;
}

function fmt(x) {
  return x == null || !Number.isFinite(x) ? '-' : String(Math.round(x));
}

// UDP counters of this network namespace (drops when a socket's receive buffer is full).
function udpCounters() {
  try {
    const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
    const names = lines[0].split(/\s+/).slice(1);
    const values = lines[1].split(/\s+/).slice(1).map(Number);
    return Object.fromEntries(names.map((n, i) => [n, values[i]]));
  } catch {
    return null;
  }
}

// ----- CPU load (Linux /proc), to tell a slow server from a starved machine -----

// (A factory, not a class: function declarations are hoisted above the top-level `await main()`.)
function cpuSampler(rootPids) {
  const roots = Object.fromEntries(Object.entries(rootPids).filter(([, pid]) => pid));
  const samples = [];
  let timer = null;
  let prev = null;
  let cores = 1;

  const read = () => {
    try {
      const stat = readFileSync('/proc/stat', 'utf8').split('\n');
      const cpu = stat[0].split(/\s+/).slice(1).map(Number);
      cores = stat.filter((l) => /^cpu\d/.test(l)).length || 1;
      const total = cpu.reduce((a, b) => a + b, 0);
      const idle = cpu[3] + (cpu[4] || 0);
      const procs = new Map();
      for (const d of readdirSync('/proc')) {
        if (!/^\d+$/.test(d)) continue;
        try {
          const t = readFileSync(`/proc/${d}/stat`, 'utf8');
          const rest = t.slice(t.lastIndexOf(')') + 2).split(' ');
          procs.set(Number(d), { ppid: Number(rest[1]), ticks: Number(rest[11]) + Number(rest[12]) });
        } catch { /* gone */ }
      }
      // Per-socket receive-buffer drops (the last column of /proc/net/udp), owner found once.
      try {
        for (const line of readFileSync('/proc/net/udp', 'utf8').split('\n').slice(1)) {
          const f = line.trim().split(/\s+/);
          if (f.length < 13) continue;
          const drops = Number(f[f.length - 1]);
          const inode = f[9];
          if (!(drops > 0)) continue;
          const known = socketDrops.get(inode);
          if (known) known.drops = Math.max(known.drops, drops);
          else socketDrops.set(inode, { port: parseInt(f[1].split(':')[1], 16), drops, owner: ownerOf(inode, procs) });
        }
      } catch { /* no /proc/net/udp */ }
      return { total, idle, procs };
    } catch {
      return null;
    }
  };
  const socketDrops = new Map(); // inode -> { port, drops, owner }
  const dropsAtStart = new Map();
  const ownerOf = (inode, procs) => {
    const target = `socket:[${inode}]`;
    for (const pid of procs.keys()) {
      try {
        for (const fd of readdirSync(`/proc/${pid}/fd`)) {
          if (readlinkSync(`/proc/${pid}/fd/${fd}`) === target) {
            const g = groupOf(pid, procs);
            let comm = '';
            try { comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim(); } catch { /* gone */ }
            return `${g} (pid ${pid} ${comm})`;
          }
        }
      } catch { /* not ours to read, or gone */ }
    }
    return 'unknown';
  };
  const groupOf = (pid, procs) => {
    if (pid === process.pid) return 'node';
    for (let p = pid, hops = 0; p > 1 && hops < 30; hops++) {
      for (const [name, root] of Object.entries(roots)) if (p === root) return name;
      p = procs.get(p)?.ppid ?? 0;
    }
    return 'other';
  };
  const diff = (a, b) => {
    const oneCore = (b.total - a.total) / cores; // elapsed ticks of one core
    const groups = {};
    for (const [pid, p] of b.procs) {
      const d = p.ticks - (a.procs.get(pid)?.ticks ?? p.ticks);
      if (d <= 0) continue;
      const g = groupOf(pid, b.procs);
      groups[g] = (groups[g] ?? 0) + (100 * d) / Math.max(1, oneCore);
    }
    const busy = b.total - a.total - (b.idle - a.idle);
    return { groups, machine: (100 * busy) / Math.max(1, b.total - a.total) };
  };
  return {
    start() {
      if (process.platform !== 'linux') return;
      prev = read();
      for (const d of socketDrops.values()) dropsAtStart.set(d.port, d.drops);
      timer = setInterval(() => {
        const now = read();
        if (prev && now) samples.push(diff(prev, now));
        prev = now;
      }, 250);
    },
    stop() {
      if (timer) clearInterval(timer);
      timer = null;
      const groups = {};
      for (const name of [...Object.keys(roots), 'node', 'other']) {
        const xs = samples.map((x) => x.groups[name] ?? 0);
        groups[name] = { mean: Math.round(avg(xs)), max: Math.round(Math.max(0, ...xs)) };
      }
      const m = samples.map((x) => x.machine);
      const drops = [...socketDrops.values()].filter((d) => d.drops > (dropsAtStart.get(d.port) ?? 0));
      return { cores, groups, machine: { mean: Math.round(avg(m)), max: Math.round(Math.max(0, ...m)) }, drops };
    },
  };
}

function avg(xs) {
  return xs.length ? xs.reduce((x, y) => x + y, 0) / xs.length : 0;
}

// ----- helpers -----

// The OBS-like publisher stands for a separate machine: on a small test box, run it (FFmpeg and
// rtp_to_whip) ahead of the many Chromium viewers so a starved encoder does not pass for a server
// stall. Needs root; without it `nice` warns and runs the command as is. TTFF_NICE=0 turns it off.
function niced(cmd, args) {
  if (process.env.TTFF_NICE === '0' || process.platform !== 'linux') return [cmd, args];
  return ['nice', ['-n', '-10', cmd, ...args]];
}

// `count` even UDP ports P with P and P+1 free on 127.0.0.1 (RTP, and FFmpeg's RTCP on P+1).
async function freeUdpPorts(count) {
  const ports = [];
  for (let attempt = 0; attempt < 200 && ports.length < count; attempt++) {
    const p = 20000 + 2 * Math.floor(Math.random() * 5000);
    if (ports.includes(p)) continue;
    if ((await udpFree(p)) && (await udpFree(p + 1))) ports.push(p);
  }
  if (ports.length < count) throw new Error('no free UDP port pair on 127.0.0.1');
  return ports;
}

function udpFree(port) {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    s.once('error', () => { s.close(); resolve(false); });
    s.bind(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

// A small seeded PRNG, so a run's join moments can be replayed with TTFF_SEED.
function mulberry32(a) {
  return function next() {
    a |= 0;
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
