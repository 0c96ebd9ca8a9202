// Switchboard demo page: publish camera + microphone over WHIP, or watch a room over WHEP.
// Plain browser JavaScript, no build step and no dependencies.
//
// URL parameters: ?room=NAME&mode=publish|watch&autostart=1&codec=vp8|vp9|h264|av1&token=JWT&trickle=1&stats=MS
// For tests: window.switchboard = { pc, state, lastError, ... } always describes the current session.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $('controls'), room: $('room'), mode: $('mode'), codec: $('codec'), token: $('token'),
    start: $('start'), stop: $('stop'), restart: $('restart'), error: $('error'), state: $('state'), ice: $('ice'),
    resource: $('resource'), video: $('video'), stats: $('stats'), hint: $('endpoint-hint'),
  };

  const params = new URLSearchParams(location.search);
  // How long to wait for ICE gathering before posting the offer; later candidates are trickled (PATCH).
  // ?trickle=1 posts at once and sends every candidate by PATCH (exercises the server's trickle ICE).
  const GATHER_TIMEOUT_MS = params.get('trickle') === '1' ? 0 : 1000;
  // How often the stats table refreshes (?stats=MS, at least 100); frame rates span about a second.
  const STATS_INTERVAL_MS = Math.max(100, Number(params.get('stats')) || 1000);
  // Publish in three simulcast layers (?simulcast=1): a quarter, half and full size.
  const SIMULCAST = params.get('simulcast') === '1';
  const SIMULCAST_ENCODINGS = [
    { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 200_000 },
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 700_000 },
    { rid: 'f', maxBitrate: 2_000_000 },
  ];
  const FPS_WINDOW_MS = 1000;

  const sb = (window.switchboard = {
    pc: null, // the current RTCPeerConnection (null when idle)
    state: 'idle', // idle | starting | new | connecting | connected | disconnected | failed | closed | error | stopped
    lastError: null, // the last error shown to the user (string), null if none
    mode: null,
    room: null,
    resource: null, // absolute URL of the WHIP/WHEP session resource (from Location)
    stats: null, // the latest summary the stats table shows
    start: (opts) => start(opts),
    stop: () => stop(),
    restartIce: () => restartIce(), // resolves true when the server took the restart (PATCH 200)
    restarts: 0, // ICE restarts completed in this session
  });

  let session = null; // { pc, mode, room, token, resourceUrl, etag, stream, postedSdp, lateCandidates, timer, prev }

  // ---------- small helpers ----------

  function setState(state) {
    sb.state = state;
    ui.state.textContent = state;
    ui.state.className = `pill s-${state}`;
  }

  function showError(message) {
    sb.lastError = message || null;
    ui.error.textContent = message || '';
    ui.error.hidden = !message;
    if (message) console.error('[switchboard]', message);
  }

  function setRunning(running) {
    ui.start.disabled = running;
    ui.stop.disabled = !running;
    ui.restart.disabled = !running;
    for (const el of [ui.room, ui.mode, ui.codec, ui.token]) if (el) el.disabled = running;
  }

  function endpointFor(mode, room) {
    const kind = mode === 'publish' ? 'whip' : 'whep';
    return new URL(`${kind}/${encodeURIComponent(room)}`, document.baseURI);
  }

  function updateHint() {
    const url = endpointFor(ui.mode.value, ui.room.value || 'demo');
    ui.hint.textContent = url.pathname;
  }

  // Turns a failed HTTP response into one readable line, using the RFC 9457 problem `detail` when present.
  async function describeFailure(res, what) {
    let text = '';
    try { text = await res.text(); } catch { /* body unreadable: keep the status line */ }
    let detail = '';
    const type = res.headers.get('Content-Type') || '';
    if (type.includes('json')) {
      try {
        const problem = JSON.parse(text);
        detail = problem.detail || problem.title || '';
      } catch { detail = text; }
    } else {
      detail = text;
    }
    detail = detail.trim().slice(0, 600);
    const status = `${res.status}${res.statusText ? ' ' + res.statusText : ''}`;
    return `${what} failed: ${status}${detail ? ' \u2014 ' + detail : ''}`;
  }

  function authHeaders(token) {
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  function waitForIceGathering(pc, timeoutMs) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', check);
        resolve();
      };
      const check = () => { if (pc.iceGatheringState === 'complete') done(); };
      const timer = setTimeout(done, timeoutMs);
      pc.addEventListener('icegatheringstatechange', check);
    });
  }

  function preferVideoCodec(transceiver, codec) {
    if (!codec || !transceiver.setCodecPreferences || !window.RTCRtpReceiver?.getCapabilities) return;
    const caps = RTCRtpReceiver.getCapabilities('video')?.codecs || [];
    const wanted = caps.filter((c) => c.mimeType.toLowerCase() === `video/${codec.toLowerCase()}`);
    if (wanted.length === 0) throw new Error(`This browser cannot send ${codec.toUpperCase()}.`);
    const helpers = caps.filter((c) => /\/(rtx|red|ulpfec|flexfec-03)$/i.test(c.mimeType));
    transceiver.setCodecPreferences([...wanted, ...helpers]);
  }

  function mediaErrorText(err) {
    const reasons = {
      NotAllowedError: 'permission to use the camera or microphone was denied',
      NotFoundError: 'no camera or microphone was found',
      NotReadableError: 'the camera or microphone is in use by another program',
      OverconstrainedError: 'the camera cannot satisfy the requested format',
    };
    return `Cannot open camera/microphone: ${reasons[err.name] || err.message || err.name}.`;
  }

  // Shared with the conference view (conference.js).
  window.switchboardPage = { authHeaders, waitForIceGathering, describeFailure, mediaErrorText };

  // ---------- trickle ICE (RFC 8840 sdpfrag over PATCH) ----------

  function sdpAttribute(sdp, name) {
    const m = sdp.match(new RegExp(`^a=${name}:(.*)$`, 'm'));
    return m ? m[1].trim() : null;
  }

  function mediaLineFor(sdp, mid) {
    // Find the m= line of the section whose a=mid matches.
    const sections = sdp.split(/\r?\n(?=m=)/);
    for (const section of sections.slice(1)) {
      if (new RegExp(`^a=mid:${mid.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s*$`, 'm').test(section)) {
        return section.split(/\r?\n/)[0];
      }
    }
    return null;
  }

  async function trickle(s, endOfCandidates) {
    if (!s.resourceUrl || s.stopped) return;
    // While an ICE restart's PATCH is in flight, a trickle with the new credentials could reach
    // the server first and be taken for the restart: hold it until the restart is answered.
    if (s.restarting) {
      s.trickleAfterRestart = s.trickleAfterRestart || endOfCandidates;
      return;
    }
    const candidates = s.lateCandidates.splice(0);
    // Nothing the server has not seen: keep the flow to one POST (but close a trickle that was started).
    if (candidates.length === 0 && !(endOfCandidates && s.trickled)) return;
    s.trickled = true;
    const sdp = s.pc.localDescription?.sdp || s.postedSdp;
    const lines = [];
    const ufrag = sdpAttribute(sdp, 'ice-ufrag');
    const pwd = sdpAttribute(sdp, 'ice-pwd');
    if (ufrag) lines.push(`a=ice-ufrag:${ufrag}`);
    if (pwd) lines.push(`a=ice-pwd:${pwd}`);
    const byMid = new Map();
    for (const c of candidates) {
      const mid = c.sdpMid ?? '0';
      if (!byMid.has(mid)) byMid.set(mid, []);
      byMid.get(mid).push(c.candidate);
    }
    if (byMid.size === 0) byMid.set(sdpAttribute(sdp, 'mid') ?? '0', []);
    for (const [mid, cands] of byMid) {
      lines.push(mediaLineFor(sdp, mid) || 'm=audio 9 UDP/TLS/RTP/SAVPF 0', `a=mid:${mid}`);
      for (const c of cands) lines.push(c.startsWith('a=') ? c : `a=${c}`);
      if (endOfCandidates) lines.push('a=end-of-candidates');
    }
    try {
      const res = await fetch(s.resourceUrl, {
        method: 'PATCH',
        headers: { 'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': s.etag || '*', ...authHeaders(s.token) },
        body: lines.join('\r\n') + '\r\n',
      });
      if (!res.ok) console.warn('[switchboard]', await describeFailure(res, 'Trickle ICE (PATCH)'));
    } catch (err) {
      console.warn('[switchboard] trickle ICE (PATCH) failed:', err);
    }
  }

  // ---------- ICE restart (RFC 9725 §4.4: PATCH an sdpfrag with new credentials) ----------

  // The fragment that restarts ICE: the offer's new credentials, then each m-line with its mid
  // and the candidates gathered so far.
  function restartFragment(sdp) {
    const ufrag = sdpAttribute(sdp, 'ice-ufrag');
    const pwd = sdpAttribute(sdp, 'ice-pwd');
    if (!ufrag || !pwd) throw new Error('ICE restart: the new offer has no ice-ufrag/ice-pwd');
    const lines = [`a=ice-ufrag:${ufrag}`, `a=ice-pwd:${pwd}`];
    for (const section of sdp.split(/\r?\n(?=m=)/).slice(1)) {
      const sl = section.split(/\r?\n/);
      const mid = sl.find((l) => l.startsWith('a=mid:'));
      if (!mid) continue;
      lines.push(sl[0], mid, ...sl.filter((l) => l.startsWith('a=candidate:') || l === 'a=end-of-candidates'));
    }
    return lines.join('\r\n') + '\r\n';
  }

  // The current remote description with the server's new credentials and candidates (the
  // PATCH answer) in place of the old ones: WHIP/WHEP renegotiate nothing else.
  function withRemoteFragment(sdp, frag) {
    const ufrag = sdpAttribute(frag, 'ice-ufrag');
    const pwd = sdpAttribute(frag, 'ice-pwd');
    if (!ufrag || !pwd) throw new Error('ICE restart: the server answered without ice-ufrag/ice-pwd');
    const fragLines = frag.split(/\r?\n/).map((l) => l.trim());
    const candidates = fragLines.filter((l) => l.startsWith('a=candidate:'));
    const ended = fragLines.includes('a=end-of-candidates');
    const sections = sdp.split(/\r?\n(?=m=)/).map((section, i) => {
      const lines = section
        .split(/\r?\n/)
        .filter((l) => l && !l.startsWith('a=candidate:') && l !== 'a=end-of-candidates')
        .map((l) => (l.startsWith('a=ice-ufrag:') ? `a=ice-ufrag:${ufrag}` : l.startsWith('a=ice-pwd:') ? `a=ice-pwd:${pwd}` : l));
      // Everything is bundled on the first m-line's transport.
      if (i === 1) lines.push(...candidates, ...(ended ? ['a=end-of-candidates'] : []));
      return lines.join('\r\n');
    });
    return sections.join('\r\n') + '\r\n';
  }

  // restartIce() + a new offer; its fragment is PATCHed to the session and the answer's
  // credentials become the new remote ones. Same session, same resource, no new POST.
  async function restartIce() {
    const s = session;
    if (!s || !s.resourceUrl || s.stopped) throw new Error('There is no session to restart.');
    if (s.restarting) return s.restarting;
    s.restarting = (async () => {
      const pc = s.pc;
      pc.restartIce();
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc, GATHER_TIMEOUT_MS);
      if (s.stopped) return false;
      const offer = pc.localDescription.sdp;
      // Candidates in this offer go with the restart; later ones are trickled after it.
      s.postedSdp = offer;
      s.lateCandidates = s.lateCandidates.filter((c) => !offer.includes(c.candidate));
      let res;
      try {
        res = await fetch(s.resourceUrl, {
          method: 'PATCH',
          // RFC 9725: a restart's If-Match is `*`; the answer carries the new ICE session's ETag.
          headers: { 'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': '*', ...authHeaders(s.token) },
          body: restartFragment(offer),
        });
      } catch (err) {
        throw new Error(`ICE restart (PATCH) failed: ${err.message}`);
      }
      if (res.status !== 200) throw new Error(await describeFailure(res, 'ICE restart (PATCH)'));
      s.etag = res.headers.get('ETag') || s.etag;
      const frag = await res.text();
      if (s.stopped) return false;
      await pc.setRemoteDescription({ type: 'answer', sdp: withRemoteFragment(pc.remoteDescription.sdp, frag) });
      s.restarts += 1;
      if (session === s) sb.restarts = s.restarts;
      return true;
    })();
    try {
      return await s.restarting;
    } catch (err) {
      if (session === s) showError(err.message || String(err));
      throw err;
    } finally {
      s.restarting = null;
      const end = s.trickleAfterRestart;
      s.trickleAfterRestart = false;
      if (!s.stopped) trickle(s, end || s.pc.iceGatheringState === 'complete');
    }
  }

  // ---------- stats ----------

  function fmtBitrate(bps) {
    if (bps == null || !isFinite(bps)) return '\u2013';
    return bps >= 1e6 ? `${(bps / 1e6).toFixed(2)} Mbit/s` : `${Math.round(bps / 1e3)} kbit/s`;
  }

  // ---------- frame rates ----------
  //
  // Chromium's inbound-rtp framesPerSecond counts frames per wall-clock second as they come out
  // of the decoder. A viewer who joins late gets the keyframe cache (seconds of video) in a
  // fraction of a second, and that burst reads as 100+ fps for a 30 fps stream. The table shows
  // instead the frames the page actually presented (requestVideoFrameCallback) over the last
  // second, and never more than that many per second of the stream's own clock (RTP timestamps
  // of the presented frames): a burst shown fast reads as the stream's rate, video that stands
  // still reads 0. Sent video (and a browser without requestVideoFrameCallback) counts frames
  // encoded (decoded) per wall-clock second between two stats samples.

  // Follows the frames `video` presents for session `s` into s.presented: { t, presented, rtp }.
  function watchPresentedFrames(s, video) {
    if (!video.requestVideoFrameCallback || s.presented) return;
    s.presented = [];
    const onFrame = (now, meta) => {
      if (session !== s || s.stopped) return;
      const samples = s.presented;
      const last = samples[samples.length - 1];
      const sample = { t: now, presented: meta.presentedFrames, rtp: Number.isFinite(meta.rtpTimestamp) ? meta.rtpTimestamp : null };
      // The stream's clock stepped back (a replayed frame after a newer one) or the count
      // did: the samples before say nothing about the rate from here on.
      const back = last && (sample.presented < last.presented || (sample.rtp != null && last.rtp != null && ((sample.rtp - last.rtp) >>> 0) >= 2 ** 31));
      if (back) samples.splice(0, samples.length);
      samples.push(sample);
      trimWindow(samples, now);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }

  // Drops the samples before the newest one that is a whole window old.
  function trimWindow(samples, now) {
    while (samples.length > 1 && now - samples[1].t >= FPS_WINDOW_MS) samples.shift();
  }

  // Presented frames per second over the last FPS_WINDOW_MS; null until a window is full.
  function presentedRate(samples, now) {
    trimWindow(samples, now);
    const from = samples[0];
    const last = samples[samples.length - 1];
    if (!from || now - from.t < FPS_WINDOW_MS * 0.9) return null;
    const frames = last.presented - from.presented;
    const wall = (frames * 1000) / (now - from.t);
    if (frames <= 0) return wall;
    // The stream's own rate: the typical RTP time per frame between presented frames. Frames
    // closer than 10 ms of RTP time are a replayed keyframe cache (squeezed 1 ms apart, shown
    // as fast as they decode, and with A/V sync spread over up to a second): they say nothing
    // about the rate, so they are left out, and the last rate known stands in.
    const perFrame = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1];
      const b = samples[i];
      const n = b.presented - a.presented;
      if (n <= 0 || a.rtp == null || b.rtp == null) continue;
      const ticks = ((b.rtp - a.rtp) >>> 0) / n; // 90 kHz, modulo 2^32
      if (ticks >= 900 && ticks < 2 * 90000) perFrame.push(ticks);
    }
    // A handful of live frames at least: the first ones after a replay straddle it.
    if (perFrame.length >= 5) {
      perFrame.sort((x, y) => x - y);
      samples.streamFps = 90000 / perFrame[Math.floor(perFrame.length / 2)];
    }
    // Until the stream's rate is known (the first second of a late join is all replay), none.
    return samples.streamFps ? Math.min(wall, samples.streamFps) : null;
  }

  // Frames per wall-clock second between two stats samples { frames, t }.
  function frameRate(prev, cur) {
    if (!prev || cur.frames == null || prev.frames == null || !(cur.t > prev.t)) return null;
    const frames = cur.frames - prev.frames;
    return frames < 0 ? null : (frames * 1000) / (cur.t - prev.t);
  }

  async function pollStats(s) {
    if (s.stopped || s.pc.signalingState === 'closed') return;
    let report;
    try { report = await s.pc.getStats(); } catch { return; }
    if (s.stopped) return;
    const now = performance.now();
    const rows = [];
    const summary = {};
    report.forEach((r) => {
      if (r.type !== 'inbound-rtp' && r.type !== 'outbound-rtp') return;
      const inbound = r.type === 'inbound-rtp';
      const bytes = inbound ? r.bytesReceived : r.bytesSent;
      // This stream's stats samples of the last FPS_WINDOW_MS (and one before), oldest first.
      const history = s.prev.get(r.id) || [];
      const prev = history[history.length - 1];
      const bitrate = prev && r.timestamp > prev.t ? ((bytes - prev.bytes) * 8 * 1000) / (r.timestamp - prev.t) : null;
      const frames = r.kind === 'video' ? (inbound ? r.framesDecoded : r.framesEncoded) : undefined;
      const sample = { bytes, t: r.timestamp, frames };
      let from = null; // the newest sample about a window old
      for (const h of history) if (sample.t - h.t >= FPS_WINDOW_MS * 0.9) from = h;
      history.push(sample);
      while (history.length > 1 && sample.t - history[1].t >= FPS_WINDOW_MS * 0.9) history.shift();
      s.prev.set(r.id, history);
      let fps = null;
      if (r.kind === 'video') fps = inbound && s.presented ? presentedRate(s.presented, now) : frameRate(from, sample);
      const codec = r.codecId && report.get(r.codecId);
      let lost = inbound ? r.packetsLost : undefined;
      if (!inbound && r.remoteId && report.get(r.remoteId)) lost = report.get(r.remoteId).packetsLost;
      const row = {
        kind: r.kind,
        direction: inbound ? 'in' : 'out',
        codec: codec ? codec.mimeType.replace(/^(audio|video)\//, '') : '',
        bitrate,
        packets: inbound ? r.packetsReceived : r.packetsSent,
        lost,
        frames,
        resolution: r.frameWidth ? `${r.frameWidth}\u00d7${r.frameHeight}` : '',
        fps,
      };
      rows.push(row);
      summary[`${row.direction}-${row.kind}`] = row;
    });
    sb.stats = summary;
    rows.sort((a, b) => (a.kind + a.direction).localeCompare(b.kind + b.direction));
    const dash = '\u2013';
    const cell = (v) => {
      const td = document.createElement('td');
      td.textContent = v === undefined || v === null || v === '' ? dash : String(v);
      return td;
    };
    ui.stats.replaceChildren(
      ...(rows.length
        ? rows.map((r) => {
            const tr = document.createElement('tr');
            tr.append(
              cell(`${r.kind} ${r.direction === 'in' ? '\u2193' : '\u2191'}`),
              cell(r.codec),
              cell(fmtBitrate(r.bitrate)),
              cell(r.packets),
              cell(r.lost),
              cell(r.frames),
              cell(r.resolution),
              cell(r.fps != null ? Math.round(r.fps) : null),
            );
            return tr;
          })
        : [Object.assign(document.createElement('tr'), { innerHTML: '<td colspan="8" class="muted">no media yet</td>' })]),
    );
  }

  // ---------- session lifecycle ----------

  async function start(opts = {}) {
    const mode = opts.mode || ui.mode.value;
    const room = (opts.room ?? ui.room.value).trim();
    const token = (opts.token ?? ui.token.value).trim();
    const codec = opts.codec ?? (ui.codec ? ui.codec.value : '');
    if (!room) { showError('Enter a room name.'); return; }
    await stop({ quiet: true });
    showError('');
    setRunning(true);
    setState('starting');
    ui.resource.textContent = '';

    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
    const s = {
      pc, mode, room, token, resourceUrl: null, etag: null, stream: null, postedSdp: null,
      lateCandidates: [], trickled: false, stopped: false, timer: null, prev: new Map(),
      restarting: null, trickleAfterRestart: false, restarts: 0, presented: null,
    };
    session = s;
    Object.assign(sb, { pc, mode, room, resource: null, stats: null, restarts: 0 });

    pc.addEventListener('connectionstatechange', () => {
      if (session !== s) return;
      setState(pc.connectionState);
      if (pc.connectionState === 'failed') {
        showError('The media connection failed (ICE or DTLS could not be established). Is UDP to the server reachable?');
      }
    });
    pc.addEventListener('iceconnectionstatechange', () => {
      if (session === s) ui.ice.textContent = pc.iceConnectionState;
    });
    pc.addEventListener('icecandidate', (e) => {
      if (!s.postedSdp || s.stopped) return; // before the POST every candidate goes in the offer
      if (e.candidate && e.candidate.candidate) {
        if (!s.postedSdp.includes(e.candidate.candidate)) s.lateCandidates.push(e.candidate);
      } else if (s.resourceUrl) {
        trickle(s, true);
      }
    });

    try {
      if (mode === 'publish') {
        let stream;
        try {
          stream = await navigator.mediaDevices.getUserMedia({
            audio: true,
            video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
          });
        } catch (err) {
          throw new Error(mediaErrorText(err));
        }
        s.stream = stream;
        if (s.stopped) { stream.getTracks().forEach((t) => t.stop()); return; }
        for (const kind of ['audio', 'video']) {
          for (const track of stream.getTracks().filter((t) => t.kind === kind)) {
            const init = { direction: 'sendonly', streams: [stream] };
            // ?simulcast=1: three encodings, as Chrome-based apps send them (rids q, h, f).
            if (kind === 'video' && SIMULCAST) init.sendEncodings = SIMULCAST_ENCODINGS;
            const tr = pc.addTransceiver(track, init);
            if (kind === 'video') preferVideoCodec(tr, codec);
          }
        }
        ui.video.srcObject = stream; // local preview (muted)
      } else {
        const remote = new MediaStream();
        pc.addTransceiver('audio', { direction: 'recvonly' });
        pc.addTransceiver('video', { direction: 'recvonly' });
        pc.addEventListener('track', (e) => {
          remote.addTrack(e.track);
          ui.video.srcObject = remote;
          watchPresentedFrames(s, ui.video);
          ui.video.play().catch(() => { /* autoplay needs the element muted; the user can unmute */ });
        });
      }

      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc, GATHER_TIMEOUT_MS);
      if (s.stopped) return;

      const endpoint = endpointFor(mode, room);
      s.postedSdp = pc.localDescription.sdp;
      let res;
      try {
        res = await fetch(endpoint, {
          method: 'POST',
          headers: { 'Content-Type': 'application/sdp', ...authHeaders(token) },
          body: s.postedSdp,
        });
      } catch (err) {
        throw new Error(`Cannot reach the server at ${endpoint.pathname}: ${err.message}`);
      }
      if (!res.ok) throw new Error(await describeFailure(res, mode === 'publish' ? 'Publish (WHIP POST)' : 'Watch (WHEP POST)'));
      const location = res.headers.get('Location');
      s.resourceUrl = location ? new URL(location, endpoint).href : null;
      s.etag = res.headers.get('ETag');
      sb.resource = s.resourceUrl;
      ui.resource.textContent = s.resourceUrl ? `session ${new URL(s.resourceUrl).pathname}` : '';
      const answer = await res.text();
      if (s.stopped) { await deleteResource(s); return; }
      if (!answer.trim()) throw new Error('The server answered without an SDP body.');
      await pc.setRemoteDescription({ type: 'answer', sdp: answer });
      if (sb.state === 'starting') setState(pc.connectionState || 'connecting');
      trickle(s, pc.iceGatheringState === 'complete');

      history.replaceState(null, '', `?room=${encodeURIComponent(room)}&mode=${mode}`);
      s.timer = setInterval(() => pollStats(s), STATS_INTERVAL_MS);
    } catch (err) {
      if (session !== s) return;
      showError(err.message || String(err));
      await stop({ keepError: true, keepState: true });
      setState('error');
    }
  }

  async function deleteResource(s, keepalive = false) {
    const url = s.resourceUrl;
    s.resourceUrl = null;
    if (!url) return;
    try {
      const res = await fetch(url, { method: 'DELETE', headers: authHeaders(s.token), keepalive });
      if (!res.ok && res.status !== 404) return describeFailure(res, 'Stop (DELETE)');
    } catch (err) {
      return `Stop (DELETE) failed: ${err.message}`;
    }
    return null;
  }

  async function stop({ quiet = false, keepError = false, keepState = false } = {}) {
    const s = session;
    if (!s) return;
    session = null;
    s.stopped = true;
    clearInterval(s.timer);
    try { s.pc.close(); } catch { /* already closed */ }
    if (s.stream) s.stream.getTracks().forEach((t) => t.stop());
    ui.video.srcObject = null;
    sb.pc = null;
    setRunning(false);
    ui.ice.textContent = '\u2013';
    const problem = await deleteResource(s);
    if (problem && !quiet) showError(problem);
    else if (!keepError && !quiet) showError('');
    if (!keepState) setState('stopped');
    ui.resource.textContent = '';
  }

  // ---------- wiring ----------

  ui.form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!ui.form.reportValidity()) return;
    start();
  });
  ui.stop.addEventListener('click', () => stop());
  ui.restart.addEventListener('click', () => restartIce().catch(() => { /* shown by restartIce */ }));
  ui.room.addEventListener('input', updateHint);
  ui.mode.addEventListener('change', () => {
    if (ui.codec) ui.codec.closest('label').hidden = ui.mode.value !== 'publish';
    updateHint();
  });
  // Leaving the page ends the session on the server too, so a reload does not leave a stale publisher.
  window.addEventListener('pagehide', () => {
    if (session && session.resourceUrl) {
      fetch(session.resourceUrl, { method: 'DELETE', headers: authHeaders(session.token), keepalive: true }).catch(() => {});
    }
  });

  if (params.get('room')) ui.room.value = params.get('room');
  if (['publish', 'watch'].includes(params.get('mode'))) ui.mode.value = params.get('mode');
  if (params.get('token')) ui.token.value = params.get('token');
  if (ui.codec && params.get('codec')) ui.codec.value = params.get('codec').toLowerCase();
  ui.mode.dispatchEvent(new Event('change'));
  // (The conference view, conference.js, starts its own.)
  if (params.get('autostart') === '1' && params.get('view') !== 'conference') start();
})();
