// Real-browser test: a Chromium viewer that offers only an mDNS (`<uuid>.local`) host candidate,
// as Chromium does on a page without camera or microphone permission, connects and plays. The
// server cannot resolve the name and does not try: it learns the viewer's address from the
// viewer's own connectivity checks (a peer-reflexive candidate).
//
//   node tests/browser/mdns.mjs
//
// Chromium hides host addresses behind mDNS names only when (a) the page has no media permission:
// --use-fake-ui-for-media-stream counts as permission for every page, so this test launches
// Chromium without it and grants the camera to the publisher's page alone; and (b) it has a
// non-loopback address to hide: without permission it gathers only on the interface of the
// default route, and on loopback it gathers nothing at all. So the test runs in a private network
// namespace with a veth pair (10.99.0.1 <-> 10.99.0.2, default route via it); the server's media
// listens on 10.99.0.2, HTTP on 127.0.0.1. No packet leaves the namespace. Without a namespace
// (not root, or `unshare`/veth unavailable) the test is skipped, unless SWITCHBOARD_REQUIRE_NETNS=1
// (scripts/test sets it when run as root), which makes that a failure.
//
// Required: the viewer's POSTed offer has candidates and every one is a `.local` name (no address
// anywhere in a candidate line, and 10.99.0.1 nowhere in the offer); the viewer connects, decodes
// 30 frames and receives audio from the server's 10.99.0.2. The server's str0m debug line about
// the peer-reflexive candidate it learnt is logged when present.
//
// Env: as publish_play.mjs (SWITCHBOARD_BIN, CHROMIUM, VERBOSE).
import { fileURLToPath } from 'node:url';
import { browserTest, pageState } from './harness.mjs';

const CLIENT_IP = '10.99.0.1';
const SERVER_IP = '10.99.0.2';
const NETNS_SETUP = [
  'ip link add sb0 type veth peer name sb1',
  `ip addr add ${CLIENT_IP}/24 dev sb0`,
  `ip addr add ${SERVER_IP}/24 dev sb1`,
  'ip link set sb0 up',
  'ip link set sb1 up',
  `ip route add default via ${SERVER_IP} dev sb0`,
].join(' && ');
const REQUIRED = process.env.SWITCHBOARD_REQUIRE_NETNS === '1';

await browserTest({
  tag: 'mdns',
  self: fileURLToPath(import.meta.url),
  hardTimeoutMs: 60_000,
  netnsSetup: NETNS_SETUP,
  requireIsolation: REQUIRED,
  skipWithoutIsolation: REQUIRED ? '' : 'needs a private network namespace with a veth pair (root, `unshare --net`, veth); set SWITCHBOARD_REQUIRE_NETNS=1 to make this a failure',
  mediaIp: SERVER_IP,
  fakeUi: false,
  rustLog: 'info,is::agent=debug', // str0m's ICE agent logs the peer-reflexive candidates it learns
  body: async ({ base, log, openPage, http, waitFor, serverLog }) => {
    const publisher = await openPage('publisher', { permissions: ['camera', 'microphone'] });
    await publisher.goto(`${base}/?room=mdns&mode=publish&autostart=1`, { timeout: 10_000 });
    const pub = await waitFor('publisher connected', () => publisher.evaluate(pageState), (s) => s.state === 'connected' || s.lastError, { timeoutMs: 15_000 });
    if (pub.lastError) throw new Error(`publisher: ${pub.lastError}`);

    const viewer = await openPage('viewer'); // no permissions: Chromium hides its addresses
    await viewer.goto(`${base}/?room=mdns&mode=watch&autostart=1`, { timeout: 10_000 });
    await waitFor('the viewer POSTs its offer', async () => http.find((h) => h.who === 'viewer' && h.method === 'POST'), Boolean, { timeoutMs: 10_000 });
    const post = http.find((h) => h.who === 'viewer' && h.method === 'POST');
    const candidates = (post.body ?? '').split(/\r?\n/).filter((l) => l.startsWith('a=candidate:'));
    log(`viewer offer candidates:\n  ${candidates.join('\n  ') || '(none)'}`);
    if (post.status !== 201) throw new Error(`the viewer's POST got ${post.status}`);
    if (!candidates.length) throw new Error('the viewer offered no candidates at all');
    const addressed = candidates.filter((l) => !/^\S+\.local$/.test(l.split(' ')[4] ?? ''));
    if (addressed.length) throw new Error(`the viewer offered addresses, not only mDNS names: ${addressed.join(' | ')}`);
    if (post.body.includes(CLIENT_IP)) throw new Error(`the viewer's offer contains ${CLIENT_IP}`);

    const view = await waitFor(
      'the viewer decodes 30 frames and receives audio',
      () => viewer.evaluate(pageState),
      (s) => s.lastError || (s.video?.framesDecoded >= 30 && s.audioPackets > 0),
      { timeoutMs: 15_000, everyMs: 200 },
    );
    if (view.lastError) throw new Error(`viewer: ${view.lastError}`);
    // The server sent media to an address that no SDP ever named: it learnt it from the checks.
    // (Chromium's socket here is a wildcard one, so its packets to 10.99.0.2 leave from 10.99.0.2.)
    const pair = view.transport;
    log(`viewer selected pair: ${pair?.local} -> ${pair?.remote}`);
    if (!pair?.remote?.includes(`${SERVER_IP}:`)) throw new Error(`the viewer's selected pair ends at ${pair?.remote}, not at the server's ${SERVER_IP}`);
    const port = pair.local?.split(':').pop();
    const learnt = serverLog.find((l) => /peer reflexive/i.test(l) && l.includes(`:${port}/`));
    log(learnt ? `server: ${learnt.replace(/^server: \S+\s+/, '').slice(0, 160)}` : `(no str0m debug line names port ${port})`);
    const stop = await viewer.evaluate(async () => { await window.switchboard.stop(); return window.switchboard.lastError; });
    if (stop) throw new Error(`viewer stop: ${stop}`);
    return `viewer offered only ${candidates.length} mDNS candidate(s) and played (${view.video.framesDecoded} frames, `
      + `${view.audioPackets} audio packets) over ${pair.local} -> ${pair.remote}`;
  },
});
