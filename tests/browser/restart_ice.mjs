// Real-browser test of ICE restarts (RFC 9725 §4.4): a Chromium publisher (WHIP) and a Chromium
// viewer (WHEP) each restart ICE mid-session through the demo page (window.switchboard.restartIce:
// pc.restartIce(), a new offer, its ice-ufrag/ice-pwd PATCHed as an sdpfrag to the session URL,
// the answer's credentials and candidates applied as the new remote ones).
//
//   node tests/browser/restart_ice.mjs
//
// Required, for each restart: the PATCH is answered 200 with a new ETag; within 2 s the page's
// transport runs on the new ICE session (its local ufrag is the new offer's) and the viewer has
// decoded frames that came over it; 20 more follow; the session URL is the same and no page POSTs
// again; no PATCH (the restart or later trickles) is refused. Both sessions then end with DELETE.
//
// Env: as publish_play.mjs (SWITCHBOARD_BIN, CHROMIUM, SWITCHBOARD_NETNS, VERBOSE).
import { fileURLToPath } from 'node:url';
import { browserTest, pageState } from './harness.mjs';

const RESUME_MS = 2000; // from the PATCH's answer to frames over the new ICE session
const FRAMES_AFTER = 20; // frames the viewer must decode after the switch (about 1 s)

await browserTest({
  tag: 'restart_ice',
  self: fileURLToPath(import.meta.url),
  hardTimeoutMs: 60_000,
  body: async ({ base, log, openPage, http, sleep, waitFor }) => {
    const publisher = await openPage('publisher', { permissions: ['camera', 'microphone'] });
    await publisher.goto(`${base}/?room=ice&mode=publish&autostart=1`, { timeout: 10_000 });
    const pub0 = await waitFor('publisher connected', () => publisher.evaluate(pageState), (s) => s.state === 'connected' || s.lastError, { timeoutMs: 15_000 });
    if (pub0.lastError) throw new Error(`publisher: ${pub0.lastError}`);
    const viewer = await openPage('viewer');
    await viewer.goto(`${base}/?room=ice&mode=watch&autostart=1`, { timeout: 10_000 });
    const view0 = await waitFor('viewer decoding', () => viewer.evaluate(pageState), (s) => s.lastError || s.video?.framesDecoded >= 20, { timeoutMs: 15_000 });
    if (view0.lastError) throw new Error(`viewer: ${view0.lastError}`);
    log(`publisher ${pub0.resource} on ${pub0.transport?.local} (ufrags ${pub0.transport?.pairLocalUfrag}/${pub0.transport?.pairRemoteUfrag}); viewer ${view0.resource} decoding`);

    const results = [];
    for (const [who, page] of [['publisher', publisher], ['viewer', viewer]]) {
      const before = await page.evaluate(pageState);
      const postEtag = http.find((h) => h.who === who && h.method === 'POST')?.headers.etag;
      const started = Date.now();
      const restarted = await page.evaluate(() => window.switchboard.restartIce().catch((e) => `error: ${e.message}`));
      const answered = Date.now();
      if (restarted !== true) throw new Error(`${who}: restartIce() gave ${restarted}`);
      const [newUfrag, serverUfrag] = await page.evaluate(() => [window.switchboard.pc.localDescription, window.switchboard.pc.remoteDescription]
        .map((d) => d.sdp.match(/^a=ice-ufrag:(\S+)/m)?.[1]));
      if (!newUfrag || newUfrag === before.transport?.pairLocalUfrag) throw new Error(`${who}: the new offer kept ufrag ${newUfrag}`);
      if (!serverUfrag || serverUfrag === before.transport?.pairRemoteUfrag) throw new Error(`${who}: the server's answer kept ufrag ${serverUfrag}`);
      const patch = http.findLast((h) => h.who === who && h.method === 'PATCH' && h.status === 200);
      if (!patch) throw new Error(`${who}: no PATCH answered 200 (${JSON.stringify(http.filter((h) => h.who === who).map((h) => `${h.method} ${h.status}`))})`);
      if (!patch.headers.etag || patch.headers.etag === postEtag) throw new Error(`${who}: the restart's ETag ${patch.headers.etag} is not new (POST gave ${postEtag})`);

      // The selected pair joins the new ICE session's candidates on both ends (ours and the
      // server's new ufrag), then the viewer decodes frames after that.
      const switched = await waitFor(
        `${who}: selected pair on the new ICE session (ufrags ${newUfrag} / ${serverUfrag})`,
        () => page.evaluate(pageState),
        (s) => s.transport?.pairLocalUfrag === newUfrag && s.transport?.pairRemoteUfrag === serverUfrag && s.transport?.pairState === 'succeeded',
        { timeoutMs: RESUME_MS, everyMs: 25 },
      );
      const switchedAt = Date.now();
      const atSwitch = (await viewer.evaluate(pageState)).video?.framesDecoded ?? 0;
      const firstFrames = await waitFor(
        `${who}: the viewer decodes frames after the switch`,
        () => viewer.evaluate(pageState),
        (s) => (s.video?.framesDecoded ?? 0) >= atSwitch + 2,
        { timeoutMs: Math.max(100, answered + RESUME_MS - Date.now()), everyMs: 25 },
      );
      const resumedAt = Date.now();
      await waitFor(
        `${who}: the viewer decodes ${FRAMES_AFTER} frames after the switch`,
        () => viewer.evaluate(pageState),
        (s) => (s.video?.framesDecoded ?? 0) >= atSwitch + FRAMES_AFTER,
        { timeoutMs: 3000, everyMs: 50 },
      );
      const after = await page.evaluate(pageState);
      if (after.resource !== before.resource) throw new Error(`${who}: the session URL changed: ${before.resource} -> ${after.resource}`);
      if (after.restarts !== 1) throw new Error(`${who}: ${after.restarts} restarts counted`);
      results.push(`${who}: PATCH answered in ${answered - started} ms, new ICE session in use after ${switchedAt - answered} ms `
        + `(${before.transport?.local} -> ${switched.transport?.local}), frames again after ${resumedAt - answered} ms`);
      log(results.at(-1));
      if (firstFrames.lastError) throw new Error(`viewer: ${firstFrames.lastError}`);
    }

    // Same sessions throughout: one POST per page, nothing refused, and a clean end.
    await sleep(500); // let a trickle after the last restart (end-of-candidates) go out
    for (const who of ['publisher', 'viewer']) {
      const posts = http.filter((h) => h.who === who && h.method === 'POST');
      if (posts.length !== 1) throw new Error(`${who} POSTed ${posts.length} times`);
      const refused = http.filter((h) => h.who === who && h.status >= 400);
      if (refused.length) throw new Error(`${who}: refused: ${refused.map((h) => `${h.method} ${h.path} ${h.status}`).join(', ')}`);
    }
    for (const [who, page] of [['viewer', viewer], ['publisher', publisher]]) {
      const end = await page.evaluate(async () => {
        await window.switchboard.stop();
        return window.switchboard.lastError;
      });
      if (end) throw new Error(`${who} stop: ${end}`);
    }
    const patches = http.filter((h) => h.method === 'PATCH').map((h) => `${h.who} ${h.status}`);
    return `${results.join('; ')}; PATCHes: ${patches.join(', ')}; one POST per page, DELETE ok`;
  },
});
