// A bottleneck link for one browser viewer, the same as the Rust tests' (tests/support/shaper.rs):
// a UDP relay on 127.0.0.1 between the viewer and the server whose server-to-viewer direction is a
// token bucket of a set rate with a bounded queue (a datagram that would wait longer than
// MAX_QUEUE_DELAY_MS is dropped), as a congested access link behaves. The viewer's answer is
// rewritten (`rewriteAnswer`) so its one candidate is the relay; the server learns the relay's
// other side from the connectivity checks (peer-reflexive).
import dgram from 'node:dgram';

export const MAX_QUEUE_DELAY_MS = 100;
const UDP_IP_OVERHEAD = 28;

export async function startShaper() {
  const viewerSide = dgram.createSocket('udp4');
  const serverSide = dgram.createSocket('udp4');
  await Promise.all([viewerSide, serverSide].map((s) => new Promise((ok) => s.bind(0, '127.0.0.1', ok))));
  let upstream = null; // the server's address (from the answer)
  let viewer = null; // the viewer's address (from its first datagram)
  let rateBps = 0; // 0: no limit
  let linkFreeAt = 0; // ms (performance.now) when the link has sent what is queued
  const counts = { dropped: 0, down: 0, up: 0 };
  const timers = new Set();

  viewerSide.on('message', (msg, rinfo) => {
    viewer = rinfo;
    counts.up += 1;
    if (upstream) serverSide.send(msg, upstream.port, upstream.address);
  });
  serverSide.on('message', (msg) => {
    if (!viewer) return;
    counts.down += 1;
    const now = performance.now();
    if (!rateBps) {
      linkFreeAt = now;
      viewerSide.send(msg, viewer.port, viewer.address);
      return;
    }
    const start = Math.max(linkFreeAt, now);
    if (start - now > MAX_QUEUE_DELAY_MS) {
      counts.dropped += 1;
      return;
    }
    linkFreeAt = start + ((msg.length + UDP_IP_OVERHEAD) * 8 * 1000) / rateBps;
    const to = viewer;
    const timer = setTimeout(() => {
      timers.delete(timer);
      viewerSide.send(msg, to.port, to.address);
    }, Math.max(0, linkFreeAt - now));
    timers.add(timer);
  });

  return {
    counts,
    // Limits the server-to-viewer direction to `kbps` (null: no limit).
    setRateKbps(kbps) { rateBps = kbps ? kbps * 1000 : 0; },
    // The answer with its first host candidate moved to the relay (the others dropped), and that
    // candidate's address remembered as the server's.
    rewriteAnswer(sdp) {
      const port = viewerSide.address().port;
      const lines = sdp.split('\r\n').filter((line) => {
        const m = line.match(/^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host/i);
        if (!line.startsWith('a=candidate:')) return true;
        if (!m || upstream && !(upstream.address === m[1] && upstream.port === +m[2])) return false;
        upstream = { address: m[1], port: +m[2] };
        return true;
      }).map((line) => line.startsWith('a=candidate:')
        ? line.replace(`${upstream.address} ${upstream.port}`, `127.0.0.1 ${port}`)
        : line);
      if (!upstream) throw new Error('the answer has no host candidate to relay');
      return lines.join('\r\n');
    },
    close() {
      for (const t of timers) clearTimeout(t);
      viewerSide.close();
      serverSide.close();
    },
  };
}
