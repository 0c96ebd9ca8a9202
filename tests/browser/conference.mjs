// Real-browser conference: three headless Chromium pages join one room from the served page's
// conference view (?view=conference), each publishing its fake camera and microphone over WHIP
// and watching over one WHEP session with three video and three audio slots. Required:
//  - each page's tiles are labelled (from the server's `slots` events) with the two others, never
//    itself;
//  - each page decodes video in the tiles of both others (framesDecoded of the inbound-rtp of
//    those tiles' m-lines keeps rising);
//  - a chat message from one page reaches the two others with its sender's identity.
//
//   node tests/browser/conference.mjs
//
// Env: as publish_play.mjs (SWITCHBOARD_BIN, CHROMIUM, SWITCHBOARD_NETNS, VERBOSE).
import { fileURLToPath } from 'node:url';
import { browserTest } from './harness.mjs';

const NAMES = ['ann', 'ben', 'cy'];
const MIN_FRAMES = 30;

// Runs in a page: the conference's state, its tiles, and frames decoded per m-line.
async function conferenceState() {
  const conf = window.conference || {};
  const out = { state: conf.state, lastError: conf.lastError, tiles: conf.tiles ? conf.tiles() : [], frames: {}, messages: conf.messages || [] };
  if (conf.viewPc) {
    const stats = await conf.viewPc.getStats();
    stats.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video' && r.mid != null) out.frames[r.mid] = r.framesDecoded ?? 0;
    });
  }
  return out;
}

await browserTest({
  tag: 'conference',
  self: fileURLToPath(import.meta.url),
  hardTimeoutMs: 90_000,
  body: async ({ base, log, openPage, waitFor }) => {
    const pages = {};
    for (const name of NAMES) {
      const page = await openPage(name, { permissions: ['camera', 'microphone'] });
      await page.goto(`${base}/?view=conference&room=meet&name=${name}&tiles=3&autostart=1`, { timeout: 10_000 });
      pages[name] = page;
    }
    // Each page: tiles labelled with the two others, and frames decoded in both those tiles.
    const first = {};
    for (const name of NAMES) {
      const others = NAMES.filter((n) => n !== name).sort();
      const s = await waitFor(
        `${name} shows ${others.join(' and ')}`,
        () => pages[name].evaluate(conferenceState),
        (s) => {
          if (s.lastError) throw new Error(`${name}: ${s.lastError}`);
          if (s.tiles.some((t) => t.participant === name)) throw new Error(`${name} is shown itself: ${JSON.stringify(s.tiles)}`);
          const shown = s.tiles.filter((t) => t.participant);
          const labels = shown.map((t) => t.participant).sort();
          return JSON.stringify(labels) === JSON.stringify(others) && shown.every((t) => (s.frames[t.mid] ?? 0) >= MIN_FRAMES);
        },
        { timeoutMs: 30_000, everyMs: 250 },
      );
      first[name] = s;
      log(`${name}: ${s.tiles.map((t) => `${t.mid}=${t.participant ?? '-'}(${s.frames[t.mid] ?? 0})`).join(' ')}`);
    }
    // Still decoding a second later (no tile froze after its first frames).
    for (const name of NAMES) {
      await waitFor(
        `${name} keeps decoding`,
        () => pages[name].evaluate(conferenceState),
        (s) => first[name].tiles.filter((t) => t.participant).every((t) => (s.frames[t.mid] ?? 0) >= (first[name].frames[t.mid] ?? 0) + 10),
        { timeoutMs: 10_000, everyMs: 250 },
      );
    }
    // Chat: ann's message reaches ben and cy, tagged with her identity.
    await waitFor('ann can send', () => pages.ann.evaluate(() => window.conference.send('hello from ann')), (sent) => sent, { timeoutMs: 10_000, everyMs: 250 });
    for (const name of ['ben', 'cy']) {
      await waitFor(
        `${name} gets ann's message`,
        () => pages[name].evaluate(() => window.conference.messages),
        (messages) => messages.some((m) => m.from === 'ann' && m.text === 'hello from ann'),
        { timeoutMs: 10_000, everyMs: 200 },
      );
    }
    const own = await pages.ann.evaluate(() => window.conference.messages.filter((m) => m.from === 'ann'));
    if (own.length) throw new Error(`ann got her own message back: ${JSON.stringify(own)}`);
    return `three participants each decode the two others (${NAMES.map((n) => Object.values(first[n].frames).join('/')).join(', ')} frames) and chat`;
  },
});
