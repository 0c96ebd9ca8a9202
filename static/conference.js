// Switchboard demo page, conference view (?view=conference): join a room, publish camera and
// microphone over WHIP, watch the others over one WHEP session with several slots (one
// recvonly m-line each), label the tiles from the server's `slots` events, and chat over the
// WHEP session's data channel. Plain WHIP/WHEP: no renegotiation, no custom signaling.
//
// URL parameters: ?view=conference&room=NAME&name=NAME&token=JWT&tiles=N&autostart=1
// For tests: window.conference = { state, lastError, identity, tiles(), messages, activeSpeaker,
// publishPc, viewPc, send(text), join(), leave() }.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const ui = {
    single: $('single'), conference: $('conference'), form: $('conf-controls'), room: $('conf-room'),
    name: $('conf-name'), token: $('conf-token'), join: $('conf-join'), leave: $('conf-leave'), error: $('conf-error'),
    state: $('conf-state'), self: $('conf-self'), tiles: $('conf-tiles'), chat: $('conf-chat'),
    chatForm: $('conf-chat-form'), chatText: $('conf-chat-text'), tabs: document.querySelectorAll('[data-view]'),
  };
  // Video (and audio) slots asked for: the most other participants shown at once.
  const TILES = Math.min(9, Math.max(1, Number(params.get('tiles')) || 4));
  const GATHER_TIMEOUT_MS = 1000;

  const conf = (window.conference = {
    state: 'idle', // idle | joining | joined | left | error
    lastError: null,
    identity: null, // the name given (with a token, the server uses the token's identity)
    messages: [], // { from, name, text } received, and { from: 'me', text } sent
    activeSpeaker: null,
    tiles: () => tiles.map((t) => ({ mid: t.mid, participant: t.participant, name: t.name })),
    join: () => join(),
    leave: () => leave(),
    send: (text) => send(text),
    publishPc: null,
    viewPc: null,
  });

  let call = null; // { publish: { pc, url }, view: { pc, url }, events, channel, token, stream, stopped }
  let tiles = []; // { mid, el, video, label, participant, name }

  function setState(state) {
    conf.state = state;
    ui.state.textContent = state;
    ui.state.className = `pill s-${state === 'joined' ? 'connected' : state === 'error' ? 'error' : 'connecting'}`;
  }

  function showError(message) {
    conf.lastError = message || null;
    ui.error.textContent = message || '';
    ui.error.hidden = !message;
    if (message) console.error('[conference]', message);
  }

  // The publish/watch page's helpers (app.js, loaded first): one way to send a
  // token, wait for ICE gathering and read a failed response.
  const { authHeaders, waitForIceGathering, describeFailure, mediaErrorText } = window.switchboardPage;

  // POSTs the offer of `pc` to `path`; resolves the session's absolute URL once answered.
  async function negotiate(pc, path, token, what) {
    if (pc.signalingState === 'stable') await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc, GATHER_TIMEOUT_MS);
    const endpoint = new URL(path, document.baseURI);
    const res = await fetch(endpoint, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', ...authHeaders(token) },
      body: pc.localDescription.sdp,
    });
    if (!res.ok) throw new Error(await describeFailure(res, what));
    const url = new URL(res.headers.get('Location'), endpoint).href;
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    return url;
  }

  function makeTile(mid) {
    const el = document.createElement('figure');
    el.className = 'tile empty';
    const video = Object.assign(document.createElement('video'), { autoplay: true, playsInline: true, muted: true });
    const label = document.createElement('figcaption');
    label.textContent = 'empty';
    el.append(video, label);
    ui.tiles.append(el);
    return { mid, el, video, label, participant: null, name: null };
  }

  // The `slots` event: which participant each slot shows.
  function onSlots(data) {
    for (const slot of data.slots || []) {
      const tile = tiles.find((t) => t.mid === slot.mid);
      if (!tile) continue;
      tile.participant = slot.participant;
      tile.name = slot.name;
      tile.label.textContent = slot.participant ? slot.name || slot.participant : 'empty';
      tile.el.classList.toggle('empty', !slot.participant);
    }
    markSpeaker();
  }

  function markSpeaker() {
    for (const t of tiles) t.el.classList.toggle('speaking', !!t.participant && t.participant === conf.activeSpeaker);
  }

  function addMessage(m) {
    conf.messages.push(m);
    const line = document.createElement('div');
    const who = document.createElement('b');
    who.textContent = m.from === 'me' ? 'me' : m.name || m.from || '?';
    line.append(who, `: ${m.text ?? m.error ?? ''}`);
    ui.chat.append(line);
    ui.chat.scrollTop = ui.chat.scrollHeight;
  }

  function send(text) {
    if (!call?.channel || call.channel.readyState !== 'open' || !text) return false;
    call.channel.send(text);
    addMessage({ from: 'me', text });
    return true;
  }

  async function join() {
    const room = ui.room.value.trim();
    const name = ui.name.value.trim() || `guest-${Math.random().toString(36).slice(2, 6)}`;
    const token = ui.token.value.trim();
    if (!room) { showError('Enter a room name.'); return; }
    await leave({ quiet: true });
    showError('');
    setState('joining');
    ui.join.disabled = true;
    ui.leave.disabled = false;
    const c = (call = { token, stopped: false, publish: null, view: null, events: null, channel: null, stream: null });
    // Without a token the name is the identity; a token's identity wins on the server.
    const query = `participant=${encodeURIComponent(name)}&name=${encodeURIComponent(name)}`;
    conf.identity = name;
    ui.self.textContent = name;
    try {
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: { ideal: 640 }, height: { ideal: 360 } } });
      } catch (err) {
        throw new Error(mediaErrorText(err));
      }
      c.stream = stream;
      $('conf-local').srcObject = stream;

      const publishPc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
      for (const track of stream.getTracks()) publishPc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      conf.publishPc = publishPc;
      c.publish = { pc: publishPc, url: null };
      c.publish.url = await negotiate(publishPc, `whip/${encodeURIComponent(room)}?${query}`, token, 'Publish (WHIP)');
      if (c.stopped) return;

      const viewPc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
      conf.viewPc = viewPc;
      c.view = { pc: viewPc, url: null };
      const videos = [];
      for (let i = 0; i < TILES; i++) {
        viewPc.addTransceiver('audio', { direction: 'recvonly' });
        videos.push(viewPc.addTransceiver('video', { direction: 'recvonly' }));
      }
      const channel = viewPc.createDataChannel('chat');
      c.channel = channel;
      channel.onmessage = (e) => {
        try { addMessage(JSON.parse(e.data)); } catch { addMessage({ from: '?', text: String(e.data) }); }
      };
      viewPc.addEventListener('track', (e) => {
        if (e.track.kind === 'audio') {
          const audio = Object.assign(document.createElement('audio'), { autoplay: true });
          audio.srcObject = new MediaStream([e.track]);
          ui.tiles.append(audio);
          return;
        }
        const tile = tiles.find((t) => t.mid === e.transceiver.mid);
        if (tile) {
          tile.video.srcObject = new MediaStream([e.track]);
          tile.video.play().catch(() => {});
        }
      });
      viewPc.addEventListener('connectionstatechange', () => {
        if (call !== c) return;
        if (viewPc.connectionState === 'connected') setState('joined');
        if (viewPc.connectionState === 'failed') { showError('The media connection failed.'); setState('error'); }
      });
      await viewPc.setLocalDescription(await viewPc.createOffer());
      tiles = videos.map((t) => makeTile(t.mid));
      c.view.url = await negotiate(viewPc, `whep/${encodeURIComponent(room)}?${query}`, token, 'Watch (WHEP)');
      if (c.stopped) return;

      const events = new EventSource(`${c.view.url}/events`);
      c.events = events;
      events.addEventListener('slots', (e) => onSlots(JSON.parse(e.data)));
      events.addEventListener('active-speaker', (e) => {
        conf.activeSpeaker = JSON.parse(e.data).participant;
        markSpeaker();
      });
      for (const what of ['participant-joined', 'participant-left']) {
        events.addEventListener(what, (e) => {
          const p = JSON.parse(e.data);
          addMessage({ from: 'server', text: `${p.name || p.identity} ${what === 'participant-joined' ? 'joined' : 'left'}` });
        });
      }
      history.replaceState(null, '', `?view=conference&room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
    } catch (err) {
      if (call !== c) return;
      showError(err.message || String(err));
      await leave({ keepError: true });
      setState('error');
    }
  }

  async function leave({ quiet = false, keepError = false } = {}) {
    const c = call;
    if (!c) return;
    call = null;
    c.stopped = true;
    if (c.events) c.events.close();
    for (const side of [c.publish, c.view]) {
      if (!side) continue;
      try { side.pc.close(); } catch { /* closed */ }
      if (side.url) fetch(side.url, { method: 'DELETE', headers: authHeaders(c.token), keepalive: true }).catch(() => {});
    }
    if (c.stream) c.stream.getTracks().forEach((t) => t.stop());
    ui.tiles.replaceChildren();
    tiles = [];
    conf.publishPc = conf.viewPc = null;
    ui.join.disabled = false;
    ui.leave.disabled = true;
    if (!keepError && !quiet) showError('');
    if (!quiet) setState('left');
  }

  function showView(view) {
    ui.single.hidden = view === 'conference';
    ui.conference.hidden = view !== 'conference';
    for (const tab of ui.tabs) tab.classList.toggle('active', tab.dataset.view === view);
  }

  ui.form.addEventListener('submit', (e) => { e.preventDefault(); join(); });
  ui.leave.addEventListener('click', () => leave());
  ui.chatForm.addEventListener('submit', (e) => {
    e.preventDefault();
    if (send(ui.chatText.value.trim())) ui.chatText.value = '';
  });
  for (const tab of ui.tabs) tab.addEventListener('click', (e) => { e.preventDefault(); showView(tab.dataset.view); });
  window.addEventListener('pagehide', () => leave({ quiet: true }));

  if (params.get('room')) ui.room.value = params.get('room');
  if (params.get('name')) ui.name.value = params.get('name');
  if (params.get('token')) ui.token.value = params.get('token');
  showView(params.get('view') === 'conference' ? 'conference' : 'single');
  if (params.get('view') === 'conference' && params.get('autostart') === '1') join();
})();
