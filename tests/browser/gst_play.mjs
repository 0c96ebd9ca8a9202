// Real-client interop, GStreamer -> Chromium: a GStreamer webrtcbin WHIP publisher
// (scripts/webrtcbin_client.py: videotestsrc 320x240 at 30 fps, a keyframe every 60 frames, Opus
// audio) publishes one room per codec, VP8 and H264, both at once; headless Chromium pages watch
// each room over WHEP through the demo page's watch view (`/?mode=watch`). Per codec (PLAN):
//
//   #1 early plain       joins as soon as the publisher is connected (ICE connected)
//   #2 early one-stream  the same moment
//   #3 late plain        3 s later       } late joiners: the server starts each on a replay of
//   #4 late plain        4 s later       } its keyframe cache (the replay is printed per viewer,
//   #5 late one-stream   5 s later       } from the server's debug log)
//
// "plain" is the demo page as it ships. "one-stream" is the same page with one change made in the
// browser: the server's answer is rewritten so the audio and the video track share one msid stream.
// Chromium lip-syncs only the tracks of one stream, so only there does it use the server's RTCP
// sender reports: its A/V sync moves the video's playout to match the audio, and reports whose
// RTP↔NTP mapping jumps can make it freeze the picture. Until 290c6dc the server's answer put each
// track in a stream of its own, so only one-stream viewers synced; since then the server answers
// one stream itself, every viewer here syncs, and the rewrite changes nothing (it is kept so the
// test means the same against an older server). The bug fixed in c6ad2ef (GStreamer 1.22's reports state an RTP time running at
// twice the clock rate; the server turned them into mappings that jumped seconds at each report)
// is only visible in a one-stream viewer.
//
// Every frame the <video> element presents is recorded with requestVideoFrameCallback. Each viewer
// watches WATCH_MS from its join (the page load) and must have:
//   - its first frame presented within FIRST_FRAME_MS of joining;
//   - at least MIN_FRAMES frames presented in the watch (rVFC's presentedFrames; 30 a second are
//     sent, so ~300 at most);
//   - plain viewers: no freeze: every gap between consecutive presented frames after the first, and
//     from the last frame to the end of the watch, under MAX_GAP_MS (the largest is printed for
//     every viewer; a one-stream viewer's is not asserted, see below);
//   - the room's codec (inbound-rtp video), and audio: inbound-rtp audio packetsReceived > 0 and
//     still growing over the last AUDIO_TAIL_MS of the watch;
//   - one-stream viewers only: A/V sync engaged (inbound-rtp video estimatedPlayoutTimestamp
//     reported), and a steady playout clock: estimatedPlayoutTimestamp (the sender's NTP time of the
//     frame playing now, from the sender reports) minus the stats' own timestamp moves by less than
//     MAX_CLOCK_SPREAD_MS over the watch. With honest reports it moves only as much as the playout
//     delay changes; with the c6ad2ef bug it jumps and runs at the wrong rate. Measured on a
//     2-core machine under heavy outside load: 22-1198 ms (median 137) per viewer at c6ad2ef,
//     85-5485 ms (median 2667, 66 of 72 viewers over the limit, every run failing) at 0c7b5c6.
//     The freezes of one-stream viewers do not tell the two apart: freezes of 1.1-2.6 s (most just
//     after the first frame, as A/V sync starts; plain viewers' gaps there stayed under 1 s) came
//     with both binaries at about the same rate (in 3 of ~29 runs at c6ad2ef, 2 of ~28 at
//     0c7b5c6), so a one-stream viewer's freeze is printed as a NOTE, not failed: it is not what
//     c6ad2ef fixed, and the demo page as it ships never turns A/V sync on.
//
//   node tests/browser/gst_play.mjs        prints one line per viewer, then "N passed, M failed"
//
// Skips (exit 0, prints "skipped") when GStreamer cannot run here, unless
// SWITCHBOARD_REQUIRE_GSTREAMER=1 (as scripts/test sets), where that fails.
//
// Env:
//   SWITCHBOARD_BIN   server binary (default: target/debug/switchboard in the repo, or $CARGO_TARGET_DIR/debug)
//   CHROMIUM          browser binary (default: /usr/bin/chromium)
//   SWITCHBOARD_REQUIRE_GSTREAMER 1 = a missing GStreamer fails instead of skipping
//   SWITCHBOARD_NETNS 0 = do not isolate in a private network namespace (default: isolate when possible)
//   GST_PLAY_PLAN     the viewers of each codec, comma-separated: p (plain) or s (one-stream) and the
//                     join delay in ms after the publisher connected (default p0,s0,p3000,p4000,s5000)
//   GST_PLAY_WATCH_MS each viewer's watch (default 10000)
//   GST_PLAY_GAPS     1 = also list every gap over 300 ms, in ms after the publisher connected
//   GST_PLAY_NICE     0 = do not run the GStreamer publishers at nice -10 (default: do, when root)
//   VERBOSE           1 = echo server, GStreamer and browser logs while running
//
// Only loopback: the server binds and announces 127.0.0.1, the GStreamer client gathers on
// 127.0.0.1 only, and when `unshare --net` works the whole test runs in a fresh network namespace
// whose only interface is `lo`.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { closeBrowser, isolated as inNetns, launchChromium, logging, once, reexecInNetns, REPO, sleep, startServer, stopChild, VERBOSE } from './lib.mjs';

const SELF = fileURLToPath(import.meta.url);
const TAG = 'gst_play';

const PYTHON = '/usr/bin/python3'; // Debian's, with python3-gi (a pyenv `python3` on PATH may lack it)
const CLIENT = path.join(REPO, 'scripts', 'webrtcbin_client.py');
const CODECS = ['vp8', 'h264'];
const MIME = { vp8: 'video/VP8', h264: 'video/H264' };

const PLAN = (process.env.GST_PLAY_PLAN || 'p0,s0,p3000,p4000,s5000').split(',').map((entry) => {
  const m = /^([ps])(\d+)$/.exec(entry.trim());
  if (!m) {
    console.error(`[gst_play] bad GST_PLAY_PLAN entry "${entry}" (want p or s and a delay in ms, e.g. s4000)`);
    process.exit(2);
  }
  return { oneStream: m[1] === 's', delay: Number(m[2]) };
});
const WATCH_MS = intEnv('GST_PLAY_WATCH_MS', 10_000); // each viewer's watch, from its join
const LAST_JOIN_MS = Math.max(...PLAN.map((p) => p.delay));

const SERVER_START_TIMEOUT_MS = 20_000;
const PUBLISHER_CONNECT_TIMEOUT_MS = 15_000;
// The publisher outlives every viewer (it is stopped when they are done).
const PUBLISHER_SECONDS = Math.ceil((LAST_JOIN_MS + WATCH_MS) / 1000) + 30;
const HARD_TIMEOUT_MS = Math.max(60_000, LAST_JOIN_MS + WATCH_MS + 45_000); // the whole run, whatever happens
const FIRST_FRAME_MS = 5000;
const MIN_FRAMES = Math.round((150 * WATCH_MS) / 10_000); // half of what is sent
const MAX_GAP_MS = 1000;
const MAX_CLOCK_SPREAD_MS = 1500;
const MIN_CLOCK_SAMPLES = 3;
const AUDIO_TAIL_MS = 3000;
const POLL_MS = 500;

// Ten viewer pages at once: never throttle their timers or rendering.
const CHROMIUM_EXTRA_ARGS = [
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

const { log, pushLine, collectLines, watchPage } = logging(TAG, 4000);
let serverLogRef = null; // the server's log lines, for replayOf()
const nChecks = () => CODECS.length * PLAN.length;

function intEnv(name, dflt) {
  const v = Number.parseInt(process.env[name] ?? '', 10);
  return Number.isFinite(v) && v > 0 ? v : dflt;
}

function finishCounts(passed, failed) {
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

// Stage -1: can GStreamer run here? Asked once, before isolating.
if (!inNetns()) {
  const problem = gstreamerProblem();
  if (problem) {
    if (process.env.SWITCHBOARD_REQUIRE_GSTREAMER === '1') {
      console.error(`[${TAG}] FAIL: GStreamer is required here (SWITCHBOARD_REQUIRE_GSTREAMER=1) but cannot run: ${problem}`);
      finishCounts(0, 1);
    }
    console.log(`[${TAG}] skipped: GStreamer cannot run here (${problem}); .ci/run installs it`);
    process.exit(0);
  }
}

// Stage 0 (lib.mjs): isolate in a private network namespace (only `lo`) when we can.
if (!reexecInNetns({ self: SELF, tag: TAG, log, hardTimeoutMs: HARD_TIMEOUT_MS, failLine: `0 passed, ${nChecks()} failed` })) {
  await main();
}

function gstreamerProblem() {
  if (!existsSync(PYTHON)) return `${PYTHON} not found`;
  const r = spawnSync(PYTHON, [CLIENT, 'check'], { encoding: 'utf8', timeout: 30_000 });
  if (r.error) return `${PYTHON} ${CLIENT} check: ${r.error.message}`;
  if (r.status !== 0) return (r.stdout || r.stderr || `exit ${r.status}`).trim().split('\n').slice(-3).join(' / ');
  return null;
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

async function main() {
  const started = Date.now();
  const isolated = inNetns();
  if (!isolated) log('network namespace isolation unavailable or disabled; relying on loopback-only addresses');

  const children = new Set(); // every process we started
  const serverLog = [];
  serverLogRef = serverLog;
  const otherLog = []; // GStreamer clients and pages
  let browser = null;
  let cleaningUp = null;

  const cleanup = async () => {
    if (cleaningUp) return cleaningUp;
    cleaningUp = (async () => {
      await closeBrowser(browser);
      await Promise.all([...children].map((c) => stopChild(c)));
    })();
    return cleaningUp;
  };
  const dumpLogs = () => {
    console.error('----- GStreamer / page log (last 60 lines) -----');
    for (const l of otherLog.slice(-60)) console.error(l);
    console.error('----- server log (last 60 lines) -----');
    for (const l of serverLog.slice(-60)) console.error(l);
    console.error('-----');
  };
  const hardTimer = setTimeout(() => {
    console.error(`[${TAG}] FAIL: hard timeout after ${HARD_TIMEOUT_MS / 1000} s`);
    dumpLogs();
    for (const c of children) try { c.kill('SIGKILL'); } catch { /* gone */ }
    console.log(`0 passed, ${nChecks()} failed`);
    process.exit(1); // playwright kills the browser it launched when the process exits
  }, HARD_TIMEOUT_MS);
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, async () => {
      await cleanup();
      console.log(`0 passed, ${nChecks()} failed`);
      process.exit(1);
    });
  }

  const results = []; // { name, ok, detail, v }
  let fatal = null;
  try {
    // ----- server and browser, started together -----
    const serverUp = startServer({
      log, collectLines, sink: serverLog, rustLog: 'info,switchboard::shard=debug', env: { RUST_LOG_STYLE: 'never' },
      readyPath: '/healthz', timeoutMs: SERVER_START_TIMEOUT_MS, onSpawn: (child) => children.add(child),
    });
    const browserUp = launchChromium({ isolated, extraArgs: CHROMIUM_EXTRA_ARGS, hint: ' (apt-get install chromium)' });
    browserUp.catch(() => {});
    const { base } = await serverUp;
    browser = await browserUp;
    log(`server answers at ${base}; Chromium ${browser.version()}`);

    // ----- both codecs at once: a GStreamer publisher and PLAN's viewers each -----
    const perCodec = await Promise.all(CODECS.map((codec) => runCodec({ codec, base, browser, children, otherLog })));
    for (const { codec, publisherError, viewers } of perCodec) {
      if (publisherError) {
        for (const name of PLAN.map(viewerName)) results.push({ name: `${codec} ${name}`, ok: false, detail: publisherError });
        continue;
      }
      for (const v of viewers) {
        const problems = judge(codec, v);
        results.push({ name: `${codec} ${v.name}`, ok: problems.length === 0, detail: problems.join('; '), v });
      }
    }
  } catch (err) {
    fatal = err?.stack || String(err);
  } finally {
    await cleanup();
    clearTimeout(hardTimer);
  }

  // ----- report -----
  for (const r of results) {
    if (!r.v) continue;
    log(describe(r.name, r.v));
    if (r.v.oneStream && r.v.maxGapMs >= MAX_GAP_MS) {
      log(`  NOTE (not failed): this one-stream viewer froze ${fmt(r.v.maxGapMs)} ms, from ${fmt(r.v.maxGapAtMs - r.v.firstFrameMs)} ms after its first frame (A/V sync on; see the header)`);
    }
    if (process.env.GST_PLAY_GAPS === '1' && r.v.gaps?.length) {
      log(`  gaps > 300 ms (start in ms after the publisher connected: length): ${r.v.gaps.map(([at, gap]) => `${fmt(at + r.v.joinedAfterPublisherMs)}: ${fmt(gap)}`).join(', ')}`);
    }
  }
  if (results.some((r) => !r.ok) || fatal) dumpLogs();
  if (fatal) console.error(`[${TAG}] FAIL: ${fatal}`);
  for (const r of results) (r.ok ? console.log : console.error)(`[${TAG}] ${r.ok ? 'PASS' : 'FAIL'}: ${r.name}${r.ok ? '' : `: ${r.detail}`}`);
  const largest = (pick) => {
    const xs = results.filter((r) => r.v && pick(r.v) != null).map((r) => pick(r.v));
    return xs.length ? fmt(Math.max(...xs)) : '-';
  };
  log(`largest gap: plain viewers ${largest((v) => (v.oneStream ? null : v.maxGapMs))} ms (limit ${MAX_GAP_MS}), ` +
    `one-stream viewers ${largest((v) => (v.oneStream ? v.maxGapMs : null))} ms (not asserted); ` +
    `largest playout clock spread ${largest((v) => v.clockSpreadMs)} ms (limit ${MAX_CLOCK_SPREAD_MS}); ` +
    `run time ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const passed = results.filter((r) => r.ok).length;
  const failed = fatal ? Math.max(nChecks() - passed, 1) : results.length - passed;
  finishCounts(passed, failed);
}

// The publisher stands for a separate machine: run it ahead of the Chromium viewers (and of
// whatever else loads a small test box) so a starved encoder does not pass for a server stall, as
// ttff.mjs does. Needs root; without it `nice` warns and runs the command as is.
function niced(cmd, args) {
  if (process.env.GST_PLAY_NICE === '0' || process.platform !== 'linux') return [cmd, args];
  return ['nice', ['-n', '-10', cmd, ...args]];
}

function viewerName({ oneStream, delay }, i) {
  return `${delay < 2000 ? 'early' : 'late'} ${oneStream ? 'one-stream' : 'plain'} viewer #${i + 1} (+${delay / 1000} s)`;
}

// One codec's room: start the GStreamer publisher, wait until it is connected, then start each of
// PLAN's viewers at its delay after that. Every viewer is measured whatever happens to the others.
async function runCodec({ codec, base, browser, children, otherLog }) {
  const room = `gst-${codec}`;
  const args = [CLIENT, 'publish', `${base}/whip/${room}`, '--codec', codec, '--seconds', String(PUBLISHER_SECONDS), '--local-address', '127.0.0.1'];
  log(`${codec}: GStreamer publisher: ${niced(PYTHON, args).flat().join(' ')}`);
  const publisher = spawn(...niced(PYTHON, args), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PYTHONUNBUFFERED: '1' } });
  children.add(publisher);
  let connected = null;
  const connectedP = new Promise((resolve) => { connected = resolve; });
  const onLine = (line) => {
    pushLine(otherLog, line);
    if (/ICE (connected|completed)/.test(line)) connected(true);
  };
  collectLines(publisher.stdout, null, `${codec} publisher`, onLine);
  collectLines(publisher.stderr, null, `${codec} publisher`, onLine);
  let exited = null;
  once(publisher, 'exit').then(([code, sig]) => {
    exited = `the GStreamer publisher exited early (code ${code}, signal ${sig})`;
    connected(false);
  });

  const t0 = Date.now();
  const ok = await Promise.race([connectedP, sleep(PUBLISHER_CONNECT_TIMEOUT_MS).then(() => false)]);
  if (!ok) {
    return { codec, publisherError: exited || `the GStreamer publisher did not connect within ${PUBLISHER_CONNECT_TIMEOUT_MS / 1000} s`, viewers: [] };
  }
  const connectedAt = Date.now();
  log(`${codec}: publisher connected after ${connectedAt - t0} ms`);

  const viewers = await Promise.all(PLAN.map(async (p, i) => {
    const name = viewerName(p, i);
    await sleep(Math.max(0, connectedAt + p.delay - Date.now()));
    const v = await watch({ codec, room, base, browser, name, oneStream: p.oneStream, otherLog })
      .catch((err) => ({ error: err?.message || String(err) }));
    v.name = name;
    v.oneStream = p.oneStream;
    v.joinedAfterPublisherMs = v.joinedAt ? v.joinedAt - connectedAt : null;
    return v;
  }));
  if (exited) return { codec, publisherError: exited, viewers: [] };
  await stopChild(publisher);
  return { codec, publisherError: null, viewers };
}

// One viewer: a fresh context and page on the demo page's watch view, WATCH_MS from the join.
async function watch({ codec, room, base, browser, name, oneStream, otherLog }) {
  const ctx = await browser.newContext();
  const who = `${codec} ${name}`;
  try {
    const page = await ctx.newPage();
    watchPage(page, who, otherLog);
    await page.addInitScript(recordFrames);
    if (oneStream) await page.addInitScript(oneMsidStream);
    const joinedAt = Date.now();
    const end = joinedAt + WATCH_MS;
    await page.goto(`${base}/?room=${room}&mode=watch&autostart=1`, { timeout: 10_000 });
    const samples = [];
    while (Date.now() < end) {
      await sleep(Math.min(POLL_MS, Math.max(0, end - Date.now())));
      const s = await page.evaluate(pageStats);
      samples.push(s);
      if (VERBOSE) log(`${who}: ${s.state} video=${JSON.stringify(s.video)} audio=${JSON.stringify(s.audio)}`);
    }
    const frames = await page.evaluate(() => ({ ...window.__frames, endedAt: performance.timeOrigin + performance.now() }));
    const v = analyse({ joinedAt, samples, frames });
    v.replay = replayOf(samples[samples.length - 1]?.resource);
    const stopError = await page.evaluate(async () => {
      await window.switchboard.stop();
      return window.switchboard.lastError;
    }).catch((e) => e.message);
    if (stopError) v.stopError = stopError;
    return v;
  } finally {
    await ctx.close().catch(() => {});
  }
}

// In every viewer page, before the demo page's script: records each frame <video id="video">
// presents (requestVideoFrameCallback) as epoch milliseconds, with rVFC's presentedFrames.
function recordFrames() {
  const rec = (window.__frames = { times: [], presented: [], supported: true });
  const hook = () => {
    const video = document.getElementById('video');
    if (!video) return;
    if (typeof video.requestVideoFrameCallback !== 'function') {
      rec.supported = false;
      return;
    }
    const onFrame = (now, md) => {
      rec.times.push(performance.timeOrigin + (md.presentationTime ?? now));
      rec.presented.push(md.presentedFrames ?? null);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', hook, { once: true });
  else hook();
}

// In one-stream viewer pages, before the demo page's script: the answer's tracks all go into one
// msid stream, so Chromium lip-syncs audio and video (by the server's sender reports).
function oneMsidStream() {
  const setRemoteDescription = RTCPeerConnection.prototype.setRemoteDescription;
  RTCPeerConnection.prototype.setRemoteDescription = function (description, ...rest) {
    if (description?.sdp) {
      const sdp = description.sdp
        .replace(/^a=msid:\S+ /gm, 'a=msid:gstplay ')
        .replace(/^(a=ssrc:\d+ msid:)\S+ /gm, '$1gstplay ')
        .replace(/^a=msid-semantic:.*$/m, 'a=msid-semantic: WMS gstplay');
      description = { type: description.type, sdp };
    }
    return setRemoteDescription.call(this, description, ...rest);
  };
}

// In a viewer page: session state and the inbound stats this test needs.
async function pageStats() {
  const sb = window.switchboard || {};
  const out = { state: sb.state, lastError: sb.lastError, resource: sb.resource, now: Date.now(), video: null, audio: null };
  if (!sb.pc) return out;
  const stats = await sb.pc.getStats();
  stats.forEach((r) => {
    if (r.type !== 'inbound-rtp') return;
    const codec = (r.codecId && stats.get(r.codecId)?.mimeType) || '';
    if (r.kind === 'video') {
      out.video = {
        codec, ts: r.timestamp, packetsReceived: r.packetsReceived, packetsLost: r.packetsLost, framesDecoded: r.framesDecoded,
        keyFramesDecoded: r.keyFramesDecoded, framesDropped: r.framesDropped, freezeCount: r.freezeCount,
        totalFreezesDuration: r.totalFreezesDuration, frameWidth: r.frameWidth, frameHeight: r.frameHeight,
        estimatedPlayoutTimestamp: r.estimatedPlayoutTimestamp ?? null,
      };
    } else if (r.kind === 'audio') {
      out.audio = { codec, packetsReceived: r.packetsReceived, packetsLost: r.packetsLost };
    }
  });
  return out;
}

function analyse({ joinedAt, samples, frames }) {
  const last = samples[samples.length - 1] ?? {};
  const times = frames.times;
  const out = {
    joinedAt, rvfc: frames.supported, state: last.state, lastError: last.lastError ?? null,
    callbacks: times.length, presentedFrames: null, firstFrameMs: null, maxGapMs: null, maxGapAtMs: null, tailMs: null,
    gaps: [], video: last.video ?? null, audio: last.audio ?? null, audioTail: null,
    clockSamples: 0, clockSpreadMs: null, clockStepMs: null,
  };
  if (times.length) {
    out.firstFrameMs = times[0] - joinedAt;
    let max = 0;
    let at = null;
    for (let i = 1; i < times.length; i++) {
      const gap = times[i] - times[i - 1];
      if (gap > max) { max = gap; at = times[i - 1] - joinedAt; }
      if (gap > 300) out.gaps.push([times[i - 1] - joinedAt, gap]);
    }
    // A freeze at the very end of the watch counts too.
    out.tailMs = frames.endedAt - times[times.length - 1];
    if (out.tailMs > max) { max = out.tailMs; at = times[times.length - 1] - joinedAt; }
    out.maxGapMs = max;
    out.maxGapAtMs = at;
    // presentedFrames counts every frame presented, also those between two callbacks.
    const p = frames.presented.filter((x) => x != null);
    out.presentedFrames = p.length ? p[p.length - 1] - p[0] + 1 : times.length;
  }
  // The playout clock: the sender's NTP time of the frame playing now minus the stats time.
  const clock = samples
    .filter((x) => x.video?.estimatedPlayoutTimestamp != null)
    .map((x) => x.video.estimatedPlayoutTimestamp - x.video.ts);
  out.clockSamples = clock.length;
  if (clock.length) {
    out.clockSpreadMs = Math.max(...clock) - Math.min(...clock);
    out.clockStepMs = 0;
    for (let i = 1; i < clock.length; i++) out.clockStepMs = Math.max(out.clockStepMs, Math.abs(clock[i] - clock[i - 1]));
  }
  // Audio growth over the last AUDIO_TAIL_MS of the watch.
  const tailStart = samples.find((x) => x.now >= joinedAt + WATCH_MS - AUDIO_TAIL_MS);
  if (tailStart && last.audio) out.audioTail = (last.audio.packetsReceived ?? 0) - (tailStart.audio?.packetsReceived ?? 0);
  return out;
}

function judge(codec, v) {
  if (v.error) return [`viewer error: ${v.error}`];
  const problems = [];
  if (v.lastError) problems.push(`page error: ${v.lastError}`);
  if (!v.rvfc) problems.push('requestVideoFrameCallback unsupported: nothing measured');
  if (v.firstFrameMs == null) problems.push(`no frame presented in ${WATCH_MS / 1000} s (state ${v.state})`);
  else if (v.firstFrameMs > FIRST_FRAME_MS) problems.push(`first frame ${fmt(v.firstFrameMs)} ms after joining (limit ${FIRST_FRAME_MS})`);
  if ((v.presentedFrames ?? 0) < MIN_FRAMES) problems.push(`${v.presentedFrames ?? 0} frames presented in ${WATCH_MS / 1000} s (need >= ${MIN_FRAMES})`);
  if (!v.oneStream && v.maxGapMs != null && v.maxGapMs >= MAX_GAP_MS) {
    problems.push(`FREEZE: no new frame for ${fmt(v.maxGapMs)} ms, from ${fmt(v.maxGapAtMs)} ms after joining (limit ${MAX_GAP_MS} ms)`);
  }
  if (!v.video?.codec) problems.push('no inbound-rtp video codec');
  else if (v.video.codec.toLowerCase() !== MIME[codec].toLowerCase()) problems.push(`video codec ${v.video.codec}, expected ${MIME[codec]}`);
  if (!(v.audio?.packetsReceived > 0)) problems.push('no audio packets received');
  else if (!(v.audioTail > 0)) problems.push(`audio packetsReceived stopped growing in the last ${AUDIO_TAIL_MS / 1000} s (at ${v.audio.packetsReceived})`);
  if (v.oneStream) {
    if (v.clockSamples < MIN_CLOCK_SAMPLES) {
      problems.push(`A/V sync never engaged (estimatedPlayoutTimestamp in ${v.clockSamples} of the samples): the one-stream rewrite did not take`);
    } else if (v.clockSpreadMs >= MAX_CLOCK_SPREAD_MS) {
      problems.push(`playout clock from the sender reports moved ${fmt(v.clockSpreadMs)} ms against real time (largest step ${fmt(v.clockStepMs)} ms; limit ${MAX_CLOCK_SPREAD_MS} ms): the reports' RTP↔NTP mapping jumps`);
    }
  }
  if (v.stopError) problems.push(`stop: ${v.stopError}`);
  return problems;
}

function describe(name, v) {
  if (v.error) return `${name}: error ${v.error}`;
  const vid = v.video || {};
  const sync = v.oneStream
    ? `playout clock spread ${fmt(v.clockSpreadMs)} ms (largest step ${fmt(v.clockStepMs)} ms, ${v.clockSamples} samples)`
    : `A/V sync ${v.clockSamples ? 'on' : 'off'}`;
  return `${name}: joined ${fmt(v.joinedAfterPublisherMs)} ms after the publisher connected, ${v.replay}; ` +
    `first frame ${fmt(v.firstFrameMs)} ms; ${v.presentedFrames ?? 0} frames presented (${v.callbacks} callbacks); ` +
    `largest gap ${fmt(v.maxGapMs)} ms at ${fmt(v.maxGapAtMs)} ms; ${sync}; ` +
    `${vid.codec ?? '-'} ${vid.frameWidth ?? '-'}x${vid.frameHeight ?? '-'} decoded ${vid.framesDecoded ?? '-'} ` +
    `(keyframes ${vid.keyFramesDecoded ?? '-'}, freezes ${vid.freezeCount ?? '-'}/${vid.totalFreezesDuration ?? '-'} s, lost ${vid.packetsLost ?? '-'}); ` +
    `${v.audio?.codec ?? '-'} ${v.audio?.packetsReceived ?? '-'} packets (+${v.audioTail ?? '-'} in the last ${AUDIO_TAIL_MS / 1000} s)`;
}

// Whether the server replayed its keyframe cache to the session at `resource` (its debug log).
function replayOf(resource) {
  if (!resource || !serverLogRef) return 'replay ?';
  const id = resource.split('/').filter(Boolean).pop();
  const line = serverLogRef.find((l) => l.includes(id) && l.includes('keyframe cache replay started'));
  if (!line) return 'no keyframe-cache replay';
  const m = /packets=(\d+)/.exec(line);
  return `keyframe-cache replay of ${m ? m[1] : '?'} packets`;
}

function fmt(x) {
  return x == null ? '-' : Number(x).toFixed(0);
}
