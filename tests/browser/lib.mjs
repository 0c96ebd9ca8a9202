// Shared pieces of the real-browser tests (publish_play.mjs, ttff.mjs): the private network
// namespace, the server and Chromium start-up, child processes, and log collection.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');
export const VERBOSE = process.env.VERBOSE === '1';

// The flags both tests launch Chromium with.
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
  // The viewer pages muted-autoplay; make sure playback never waits for a user gesture.
  '--autoplay-policy=no-user-gesture-required',
  '--disable-features=MediaRouter,OptimizationHints,Translate',
  '--disable-dev-shm-usage', // small /dev/shm in containers
  '--disable-default-apps',
  '--disable-extensions',
  '--metrics-recording-only',
  '--no-default-browser-check',
];

// `log`, `pushLine`, `collectLines` and `watchPage` for one script: its log lines start with
// `[tag]`, and a sink keeps at most `maxLines` lines (trimmed to half when it overflows).
export function logging(tag, maxLines) {
  const log = (...args) => console.log(`[${tag}]`, ...args);

  const pushLine = (sink, line) => {
    sink.push(line);
    if (sink.length > maxLines) sink.splice(0, sink.length - maxLines / 2);
    if (VERBOSE) console.log(line);
  };

  // Each line of `stream` as `prefix: line`, into `sink` (or to `onLine` instead, when given).
  const collectLines = (stream, sink, prefix, onLine) => {
    let buf = '';
    stream.setEncoding('utf8');
    const emit = (l) => {
      if (onLine) onLine(`${prefix}: ${l}`.replace(/^rtp_to_whip: rtp_to_whip: /, 'rtp_to_whip: '));
      else pushLine(sink, `${prefix}: ${l}`);
    };
    stream.on('data', (chunk) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        emit(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
    stream.on('end', () => { if (buf) emit(buf); });
  };

  // A page's console and uncaught errors, as `who: [type] text`.
  const watchPage = (page, who, sink) => {
    page.on('console', (m) => pushLine(sink, `${who}: [${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => pushLine(sink, `${who}: [pageerror] ${e.message}`));
  };

  return { log, pushLine, collectLines, watchPage };
}

// ---------------------------------------------------------------------------------------------
// Stage 0: isolate in a private network namespace (only `lo`) when we can, by re-running ourselves.
// ---------------------------------------------------------------------------------------------

// True in the re-run inside the namespace.
export function isolated() {
  return process.env.SWITCHBOARD_IN_NETNS === '1';
}

// Whether a fresh network namespace can be had (and `setup` runs in it).
export function netnsUsable(setup = '') {
  if (process.env.SWITCHBOARD_NETNS === '0' || process.env.SWITCHBOARD_IN_NETNS === '1') return false;
  if (process.platform !== 'linux') return false;
  const script = `ip link set lo up${setup ? ` && ${setup}` : ''}`;
  const probe = spawnSync('unshare', ['--net', '--', 'sh', '-c', script], { stdio: 'ignore', timeout: 5000 });
  return probe.status === 0;
}

// Re-runs the script `self` in a fresh network namespace when possible and returns true: this
// process then only waits for that run and exits with its code. Returns false when the test is to
// run here (already inside, or no namespace to be had). `failLine` is the script's final
// `N passed, M failed` line for a run that never got to print its own.
// `setup`, if given, is more shell run inside the namespace before the script (e.g. a veth pair).
export function reexecInNetns({ self, tag, log, hardTimeoutMs, failLine, setup = '' }) {
  if (isolated() || !netnsUsable(setup)) return false;
  log(`running inside a private network namespace (${setup ? 'loopback and its own veth pair' : 'loopback only'})`);
  const script = `ip link set lo up && ${setup ? `${setup} && ` : ''}exec "$0" "$@"`;
  const child = spawn(
    'unshare',
    ['--net', '--', 'sh', '-c', script, process.execPath, self, ...process.argv.slice(2)],
    { stdio: 'inherit', detached: true, env: { ...process.env, SWITCHBOARD_IN_NETNS: '1' } },
  );
  const killChild = (sig) => { try { process.kill(-child.pid, sig); } catch { /* gone */ } };
  const hard = setTimeout(() => {
    console.error(`[${tag}] FAIL: hard timeout in the namespaced run; killing it`);
    killChild('SIGKILL');
    console.log(failLine);
    process.exit(1);
  }, hardTimeoutMs + 15_000);
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killChild('SIGKILL'); process.exit(1); });
  child.on('exit', (code, signal) => {
    clearTimeout(hard);
    killChild('SIGKILL'); // anything left in its process group
    if (signal) {
      console.error(`[${tag}] FAIL: namespaced run died of ${signal}`);
      console.log(failLine);
      process.exit(1);
    }
    process.exit(code ?? 1);
  });
  return true;
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

// A binary built by cargo: $envName if set, else `rel` under target/debug (or $CARGO_TARGET_DIR/debug).
export function binary(envName, rel) {
  if (process.env[envName]) return path.resolve(process.env[envName]);
  const target = process.env.CARGO_TARGET_DIR ? path.resolve(REPO, process.env.CARGO_TARGET_DIR) : path.join(REPO, 'target');
  return path.join(target, 'debug', rel);
}

// Starts the server on a free loopback port (media on 127.0.0.1, ephemeral UDP ports), its output
// into `sink`, and waits until `readyPath` answers HTTP. `onSpawn(child, base)` learns the process
// as soon as it exists, so the caller can kill it whatever happens next.
// `mediaIp` (default 127.0.0.1) is the address the media sockets bind and announce; HTTP is always
// on loopback.
export async function startServer({ log, collectLines, sink, rustLog, env = {}, readyPath, timeoutMs, onSpawn, mediaIp = '127.0.0.1' }) {
  const bin = binary('SWITCHBOARD_BIN', 'switchboard');
  if (!existsSync(bin)) throw new Error(`server binary not found at ${bin} (run \`cargo build\` or set SWITCHBOARD_BIN)`);
  const port = await freeTcpPort();
  const args = ['serve', '--listen', `127.0.0.1:${port}`, '--media-ip', mediaIp, '--udp-port-min', '0', '--udp-port-max', '0'];
  log(`starting ${bin} ${args.join(' ')}`);
  const server = spawn(bin, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || rustLog, NO_COLOR: '1', ...env },
  });
  const base = `http://127.0.0.1:${port}`;
  onSpawn?.(server, base);
  collectLines(server.stdout, sink, 'server');
  collectLines(server.stderr, sink, 'server');
  const serverExited = once(server, 'exit').then(([code, sig]) => {
    throw new Error(`server exited early (code ${code}, signal ${sig})`);
  });
  serverExited.catch(() => {});
  await Promise.race([waitForHttp(base + readyPath, timeoutMs), serverExited]);
  return { server, base };
}

export function freeTcpPort() {
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

export async function waitForHttp(url, timeoutMs) {
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

// ---------------------------------------------------------------------------------------------
// Chromium
// ---------------------------------------------------------------------------------------------

// Launches headless Chromium ($CHROMIUM, default /usr/bin/chromium) with the shared flags and
// `extraArgs`; `hint` is appended to the error when the binary is missing.
// `fakeUi: false` leaves out --use-fake-ui-for-media-stream: with it, Chromium counts every page as
// holding camera permission, so no page hides its host addresses behind mDNS names. Pages that
// need the camera then get it from the context's `permissions`.
export async function launchChromium({ isolated, extraArgs = [], hint = '', fakeUi = true }) {
  const { chromium } = await import('playwright-core');
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
  if (!existsSync(executablePath)) throw new Error(`Chromium not found at ${executablePath}${hint}`);
  const args = [...CHROMIUM_ARGS.filter((a) => fakeUi || a !== '--use-fake-ui-for-media-stream'), ...extraArgs];
  if (!isolated) {
    // Outside a namespace, keep Chromium from announcing mDNS names (multicast on real interfaces).
    const i = args.findIndex((a) => a.startsWith('--disable-features='));
    args[i] += ',WebRtcHideLocalIpsWithMdns';
  }
  return chromium.launch({ executablePath, headless: true, args, timeout: 30_000 });
}

export async function closeBrowser(browser) {
  if (browser) await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
}

// ---------------------------------------------------------------------------------------------
// Processes and time
// ---------------------------------------------------------------------------------------------

// SIGTERM, then SIGKILL if it has not exited 3 s later.
export async function stopChild(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  try { child.kill('SIGTERM'); } catch { return; }
  const ok = await Promise.race([exited.then(() => true), sleep(3000).then(() => false)]);
  if (!ok) try { child.kill('SIGKILL'); } catch { /* gone */ }
}

export function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
