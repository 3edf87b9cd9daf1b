// callrouter call page: microphone → WHIP (RFC 9725) → ingest, or any call of the tenant watched by
// its id; the call's events ← SSE, drawn by view.js.
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// The endpoint is on this page's origin: ?whip= may pick another path (a second endpoint), never
// another host, which would be handed the token.
let endpoint = new URL('/whip', location.href).href;
if (params.has('whip')) {
  const u = new URL(params.get('whip'), location.href);
  if (u.origin === location.origin) endpoint = u.href;
  else showError(`?whip= ignored: ${u.origin} is not this page's origin`);
}
// The token never travels in a URL (history, logs, Referer): it is typed into the Token field,
// kept for this tab in sessionStorage, and sent as an Authorization header. A ?token= in the
// address is not read; it is removed from the address bar and history.
const tokenKey = 'callrouter.whip.token';
if (params.has('token')) {
  params.delete('token');
  const q = params.toString();
  history.replaceState(null, '', location.pathname + (q ? `?${q}` : '') + location.hash);
  showError('a token in the page address is ignored: enter it in the Token field');
}
$('token').value = sessionStorage.getItem(tokenKey) || '';
$('token').addEventListener('input', () => {
  const t = $('token').value.trim();
  if (t) sessionStorage.setItem(tokenKey, t); else sessionStorage.removeItem(tokenKey);
});

let pc = null, stream = null, sessionURL = null, events = null, statsTimer = null, count = 0, watching = false;

function setState(s, why) {
  $('state').textContent = why ? `${s} (${why})` : s;
  $('state').dataset.state = s;
  document.body.dataset.state = s;
}

function showError(msg) { $('error').textContent = msg || ''; }

function authHeaders() {
  const t = $('token').value.trim();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

function addEvent(ev) {
  count++;
  $('count').textContent = `(${count})`;
  document.body.dataset.events = String(count);
  if (ev.kind === 'level') { callView.onEvent(ev); return; } // drawn by the meters, not listed
  const li = document.createElement('li');
  li.dataset.kind = ev.kind || '';
  li.dataset.source = ev.source || 'whip';
  const time = (ev.time ? new Date(ev.time) : new Date()).toISOString().slice(11, 23);
  const kind = document.createElement('span');
  kind.className = 'kind';
  kind.textContent = ev.kind || '?';
  const src = document.createElement('span');
  src.className = 'src';
  src.textContent = ` ${time} ${ev.source || 'whip'} `;
  const body = document.createElement('span');
  const data = ev.kind === 'state' ? (ev.reason ? { state: ev.state, reason: ev.reason } : { state: ev.state }) : ev.data;
  const text = data === undefined ? '' : JSON.stringify(data);
  body.textContent = text.length > 400 ? text.slice(0, 400) + '…' : text;
  li.append(kind, src, body);
  $('events').append(li);
  callView.onEvent(ev);
  if (ev.kind === 'state' && ev.state === 'ended') { finish(ev.reason); }
  if (watching && ev.kind === 'state' && ev.state === 'watching') setState('watching');
  if (watching && ev.kind === 'end') setState('ended', ev.data && typeof ev.data.reason === 'string' ? ev.data.reason : 'end');
}

function clearCall() {
  if (events) { events.abort(); events = null; } // the last call's stream, still lingering
  $('events').textContent = '';
  count = 0;
  $('count').textContent = '(0)';
  callView.reset();
}

// watch follows a call that this page did not place (a SIP call, another page's call), by its
// id, with the token's tenant: GET <endpoint>/calls/<call>/events.
async function watch(e) {
  e.preventDefault();
  const id = $('watchid').value.trim();
  if (!id) { showError('enter the id of a call to watch'); return; }
  if (pc) { showError('hang up first'); return; }
  showError('');
  clearCall();
  watching = true;
  $('callid').textContent = id;
  $('tenant').textContent = '';
  setState('subscribing');
  await follow(`${endpoint}/calls/${encodeURIComponent(id)}/events`, authHeaders());
  if (watching && document.body.dataset.state !== 'ended') setState('idle', 'stream closed');
}

// follow reads the session's event stream (Server-Sent Events) with fetch, not EventSource,
// which cannot send the Authorization header the stream requires.
async function follow(url, headers) {
  const ctl = new AbortController();
  events = ctl;
  try {
    const res = await fetch(url, { headers: { Accept: 'text/event-stream', ...headers }, signal: ctl.signal, cache: 'no-store' });
    if (!res.ok) throw new Error(`events: ${res.status} ${(await res.text()).trim().slice(0, 200)}`);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
        if (data) { try { addEvent(JSON.parse(data)); } catch (e) { console.error(e); } }
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') { console.error(e); showError(String(e.message || e)); }
  } finally {
    if (events === ctl) events = null;
  }
}

function waitGathered(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') { clearTimeout(t); resolve(); }
    });
  });
}

async function call() {
  showError('');
  $('call').disabled = true;
  watching = false;
  clearCall();
  setState('starting');
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    pc.addTransceiver(stream.getAudioTracks()[0], { direction: 'sendonly', streams: [stream] });
    pc.onconnectionstatechange = () => {
      if (!pc) return;
      const s = pc.connectionState;
      if (s === 'connected') setState('connected');
      if (s === 'failed') { setState('failed', 'ice/dtls'); hangup(); }
    };
    await pc.setLocalDescription(await pc.createOffer());
    await waitGathered(pc, 3000);
    setState('placing');
    const res = await fetch(endpoint, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', ...authHeaders() },
      body: pc.localDescription.sdp,
    });
    if (res.status !== 201) {
      const text = (await res.text()).trim();
      const retry = res.headers.get('Retry-After');
      throw new Error(`${res.status} ${text}${retry ? ` (retry after ${retry} s)` : ''}`);
    }
    sessionURL = new URL(res.headers.get('Location'), endpoint).href;
    $('callid').textContent = res.headers.get('X-Callrouter-Call') || '?';
    $('tenant').textContent = `tenant ${res.headers.get('X-Callrouter-Tenant') || '?'}`;
    follow(sessionURL + '/events', authHeaders());
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    setState('connecting');
    $('hangup').disabled = false;
    statsTimer = setInterval(stats, 1000);
  } catch (e) {
    showError(String(e.message || e));
    setState('failed', 'setup');
    cleanup();
  }
}

async function stats() {
  if (!pc) return;
  const r = await pc.getStats();
  r.forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'audio') {
      $('sent').textContent = s.packetsSent;
      const c = r.get(s.codecId);
      if (c) $('codec').textContent = `${c.mimeType} ${c.clockRate} Hz`;
    }
  });
}

function cleanup() {
  if (statsTimer) { clearInterval(statsTimer); statsTimer = null; }
  if (pc) { pc.close(); pc = null; }
  if (stream) { stream.getTracks().forEach((t) => t.stop()); stream = null; }
  $('hangup').disabled = true;
  $('call').disabled = false;
}

function finish(reason) {
  setState('ended', reason);
  cleanup();
}

async function hangup() {
  $('hangup').disabled = true;
  const url = sessionURL;
  sessionURL = null;
  if (url) {
    try { await fetch(url, { method: 'DELETE', headers: authHeaders() }); } catch (e) { showError(String(e)); }
  }
  if (document.body.dataset.state !== 'ended') setState('ended', 'hangup');
  cleanup();
}

$('call').addEventListener('click', call);
$('hangup').addEventListener('click', hangup);
$('watchform').addEventListener('submit', watch);
// ?call=<id> fills in the call to watch (the token is never read from the address).
if (params.has('call')) $('watchid').value = params.get('call').slice(0, 1024);
setState('idle');
