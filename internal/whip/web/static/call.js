// callrouter call page: microphone → WHIP (RFC 9725) → ingest; the call's events ← SSE.
'use strict';

const params = new URLSearchParams(location.search);
const endpoint = new URL(params.get('whip') || '/whip', location.href).href;
const $ = (id) => document.getElementById(id);
$('token').value = params.get('token') || '';

let pc = null, stream = null, sessionURL = null, events = null, statsTimer = null, count = 0;

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
  if (ev.kind === 'state' && ev.state === 'ended') { finish(ev.reason); }
}

function follow(url) {
  events = new EventSource(url);
  events.onmessage = (m) => { try { addEvent(JSON.parse(m.data)); } catch (e) { console.error(e); } };
  events.onerror = () => { if (events && events.readyState === EventSource.CLOSED) { events = null; } };
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
  $('events').textContent = '';
  count = 0;
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
    follow(sessionURL + '/events');
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
setState('idle');
