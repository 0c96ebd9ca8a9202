// The frame of the smaller real-browser tests (restart_ice.mjs and the ones after it): the
// namespace re-run, a hard timeout, the server, Chromium, pages with their logs and HTTP traffic
// recorded, clean-up, logs on failure, and the final `N passed, M failed` line.
//
// A test is `browserTest({ tag, self, body })`; `body(t)` drives the pages and returns a line that
// says what passed, or throws. `t` has: base (server URL), log, openPage(who, opts), http (every
// fetch/XHR response the pages saw, with the request body), serverLog (its lines so far), sleep,
// waitFor.
import { closeBrowser, isolated as inNetns, launchChromium, logging, reexecInNetns, sleep, startServer, stopChild } from './lib.mjs';

export async function browserTest({
  tag,
  self,
  body,
  hardTimeoutMs = 90_000,
  netnsSetup = '', // shell run inside the namespace before the test (see lib.mjs reexecInNetns)
  requireIsolation = false, // fail (or skip, see below) when no namespace can be had
  skipWithoutIsolation = '', // when set: without a namespace, skip with this reason instead of failing
  mediaIp = '127.0.0.1',
  fakeUi = true,
  rustLog = 'info',
  serverEnv = {}, // e.g. SWITCHBOARD_SESSION_KEYFRAME_REQUEST_INTERVAL (config.rs)
}) {
  const { log, pushLine, collectLines, watchPage } = logging(tag, 3000);
  const finish = (ok, message, skipped = false) => {
    if (message) (ok ? console.log : console.error)(`[${tag}] ${skipped ? 'SKIP' : ok ? 'PASS' : 'FAIL'}: ${message}`);
    console.log(skipped ? '0 passed, 0 failed, 1 skipped' : ok ? '1 passed, 0 failed' : '0 passed, 1 failed');
    process.exit(ok ? 0 : 1);
  };
  if (reexecInNetns({ self, tag, log, hardTimeoutMs, failLine: '0 passed, 1 failed', setup: netnsSetup })) return;
  const isolated = inNetns();
  if (!isolated) {
    if (skipWithoutIsolation) finish(true, skipWithoutIsolation, true);
    if (requireIsolation) finish(false, 'this test needs a private network namespace (root and `unshare --net`)');
    log('network namespace isolation unavailable or disabled; relying on loopback-only addresses');
  }

  let server = null;
  let browser = null;
  let base = null;
  let cleaningUp = null;
  const serverLog = [];
  const pageLogs = {};
  const http = [];

  const cleanup = async () => {
    if (!cleaningUp) cleaningUp = (async () => { await closeBrowser(browser); await stopChild(server); })();
    return cleaningUp;
  };
  const dumpLogs = () => {
    for (const [who, lines] of Object.entries(pageLogs)) {
      if (!lines.length) continue;
      console.error(`----- ${who} page (last 40 lines) -----`);
      for (const l of lines.slice(-40)) console.error(l);
    }
    console.error('----- server log (last 80 lines) -----');
    for (const l of serverLog.slice(-80)) console.error(l);
    console.error('-----');
  };
  const hardTimer = setTimeout(() => {
    console.error(`[${tag}] FAIL: hard timeout after ${hardTimeoutMs / 1000} s`);
    dumpLogs();
    if (server) try { server.kill('SIGKILL'); } catch { /* gone */ }
    console.log('0 passed, 1 failed');
    process.exit(1); // playwright kills the browser it launched when this process exits
  }, hardTimeoutMs);
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, async () => { await cleanup(); finish(false, `interrupted by ${sig}`); });

  // Polls `probe()` every `everyMs` until `done(value)` holds; the last value, or throws `what`
  // (with the last value) after `timeoutMs`.
  const waitFor = async (what, probe, done, { timeoutMs, everyMs = 100 }) => {
    const deadline = Date.now() + timeoutMs;
    let value;
    for (;;) {
      value = await probe();
      if (done(value)) return value;
      if (Date.now() >= deadline) throw new Error(`${what}: not within ${timeoutMs} ms (last: ${JSON.stringify(value)})`);
      await sleep(everyMs);
    }
  };

  let ok = false;
  let message = '';
  try {
    await startServer({
      log, collectLines, sink: serverLog, rustLog, readyPath: '/', timeoutMs: 20_000, mediaIp, env: serverEnv,
      onSpawn: (child, url) => { server = child; base = url; },
    });
    log(`server answers at ${base} (media on ${mediaIp})`);
    browser = await launchChromium({ isolated, fakeUi, hint: ' (apt-get install chromium)' });
    log(`launched Chromium ${browser.version()}${fakeUi ? '' : ' (no fake media UI: only granted pages hold camera permission)'}`);

    // A page in its own context (`permissions`: e.g. ['camera', 'microphone']), logged as `who`.
    const openPage = async (who, { permissions = [] } = {}) => {
      // An empty `permissions` list is not the same as none: Playwright then denies every
      // permission, camera included, which the fake media UI would otherwise grant.
      const ctx = await browser.newContext(permissions.length ? { permissions } : {});
      const page = await ctx.newPage();
      const sink = (pageLogs[who] = []);
      watchPage(page, who, sink);
      page.on('requestfailed', (r) => pushLine(sink, `${who}: [requestfailed] ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
      page.on('response', async (r) => {
        const type = r.request().resourceType();
        if (type !== 'fetch' && type !== 'xhr') return;
        const request = r.request();
        const entry = {
          who, method: request.method(), path: new URL(r.url()).pathname, status: r.status(), headers: r.headers(), at: Date.now(),
          body: request.method() === 'GET' ? null : request.postData(), // what the server was sent
        };
        http.push(entry);
        pushLine(sink, `${who}: [http] ${entry.method} ${entry.path} -> ${entry.status}`);
      });
      return page;
    };

    message = await body({ base, log, openPage, http, sleep, waitFor, serverLog });
    ok = true;
  } catch (err) {
    message = err?.stack && process.env.VERBOSE === '1' ? err.stack : err?.message || String(err);
    dumpLogs();
  } finally {
    await cleanup();
    clearTimeout(hardTimer);
  }
  finish(ok, message);
}

// ---------------------------------------------------------------------------------------------
// Runs in a page (page.evaluate): the demo page's state and the numbers the tests look at.
// ---------------------------------------------------------------------------------------------
export async function pageState() {
  const sb = window.switchboard || {};
  const out = {
    state: sb.state, lastError: sb.lastError, resource: sb.resource, restarts: sb.restarts,
    ice: sb.pc?.iceConnectionState, video: null, outVideo: null, audioPackets: 0, transport: null,
    presented: window.__presented ?? null, fpsCell: null,
  };
  // The fps column of the inbound (or outbound) video row of the stats table.
  for (const tr of document.querySelectorAll('#stats tr')) {
    const cells = [...tr.children].map((td) => td.textContent);
    if (cells[0]?.startsWith('video')) out.fpsCell = cells[7];
  }
  if (!sb.pc) return out;
  const stats = await sb.pc.getStats();
  stats.forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') {
      out.video = { framesDecoded: r.framesDecoded ?? 0, packets: r.packetsReceived, lost: r.packetsLost, pli: r.pliCount, nack: r.nackCount, kfd: r.keyFramesDecoded, framesReceived: r.framesReceived, dropped: r.framesDropped, framesPerSecond: r.framesPerSecond, t: r.timestamp };
    } else if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      out.audioPackets = r.packetsReceived;
    } else if (r.type === 'outbound-rtp' && r.kind === 'video') {
      out.outVideo = { keyFrames: r.keyFramesEncoded, framesEncoded: r.framesEncoded ?? 0, framesSent: r.framesSent ?? 0, packets: r.packetsSent, framesPerSecond: r.framesPerSecond, t: r.timestamp };
    } else if (r.type === 'transport' && r.selectedCandidatePairId) {
      const p = stats.get(r.selectedCandidatePairId);
      const l = p && stats.get(p.localCandidateId);
      const rm = p && stats.get(p.remoteCandidateId);
      out.transport = {
        localUfrag: r.iceLocalUsernameFragment, dtls: r.dtlsState, ice: r.iceState, pairState: p?.state,
        // The ICE session (ufrag) of each end of the selected pair.
        pairLocalUfrag: l?.usernameFragment, pairRemoteUfrag: rm?.usernameFragment,
        local: l && `${l.candidateType} ${l.address ?? l.ip}:${l.port}`, remote: rm && `${rm.candidateType} ${rm.address ?? rm.ip}:${rm.port}`,
      };
    }
  });
  return out;
}

// Runs in a page: counts the video element's presented frames (requestVideoFrameCallback) into
// window.__presented.
export function countPresentedFrames() {
  const video = document.getElementById('video');
  if (window.__presented !== undefined || !video?.requestVideoFrameCallback) return;
  window.__presented = 0;
  const tick = () => {
    window.__presented += 1;
    video.requestVideoFrameCallback(tick);
  };
  video.requestVideoFrameCallback(tick);
}
