// callrouter call page: the call as people read one, built from the call's events (docs/processors.md):
// per leg a speech timeline (speech start/stop), DTMF markers (dtmf), a live level meter (level,
// published when the pool runs levels with meter_ms; after the call, the speech level from
// levels), lost frames (gap) hatched on their leg, overtalk where two or more legs speak at
// once, and at the end the accounting (accounting, gap, speech_summary). Times are media time
// since the leg's first frame. Everything that comes from an event reaches the page as text
// (textContent, dataset), never as markup.
'use strict';

const callView = (() => {
  const $ = (id) => document.getElementById(id);
  const METER_FLOOR = -60; // dBFS at the meter's left end
  const METER_STALE_MS = 1500; // a meter with no level event for this long reads as silent
  const MAX_MARKS = 5000; // segments, digits, gaps kept per leg (the page stays responsive)
  let v;

  function reset() {
    v = {
      legs: new Map(), // index → {index, name, segs: [{start, end|null}], digits: [], level}
      t0: null, // performance.now() when the call's start was seen
      endedAt: null, // media ms at which the call ended
      maxMs: 0,
      acct: new Map(), // index → summed accounting
      accountings: 0,
      gaps: [],
      speechSummary: null,
      levels: 0,
    };
    $('legs').textContent = '';
    $('overtalk-track').textContent = '';
    $('axis').textContent = '';
    $('accounting').hidden = true;
    $('acct-legs').textContent = '';
    $('gaps').textContent = '';
    $('meter-note').hidden = true;
    delete document.body.dataset.lost;
    render();
  }

  const num = (x, d = 0) => (typeof x === 'number' && Number.isFinite(x) ? x : d);

  function leg(index, name) {
    index = num(index, -1);
    if (index < 0 || index > 63) return null;
    let l = v.legs.get(index);
    if (!l) {
      l = { index, name: `leg ${index}`, segs: [], digits: [], level: null };
      v.legs.set(index, l);
      buildRow(l);
    }
    if (typeof name === 'string' && name) {
      l.name = name.slice(0, 64);
      l.row.querySelector('.name').textContent = l.name;
    }
    return l;
  }

  function buildRow(l) {
    const row = document.createElement('div');
    row.className = 'row leg';
    row.dataset.leg = String(l.index);
    const head = document.createElement('div');
    head.className = 'head';
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = l.name;
    const meter = document.createElement('div');
    meter.className = 'meter';
    meter.dataset.updates = '0';
    const fill = document.createElement('div');
    fill.className = 'fill';
    const db = document.createElement('span');
    db.className = 'db';
    db.textContent = '– dBFS';
    meter.append(fill);
    head.append(name, meter, db);
    const track = document.createElement('div');
    track.className = 'track';
    row.append(head, track);
    // rows in leg order
    const next = [...$('legs').children].find((r) => Number(r.dataset.leg) > l.index);
    $('legs').insertBefore(row, next || null);
    l.row = row;
  }

  function cursor() {
    if (v.endedAt !== null) return Math.max(v.endedAt, v.maxMs);
    if (v.t0 === null) return v.maxMs;
    return Math.max(performance.now() - v.t0, v.maxMs);
  }

  function seen(ms) {
    v.maxMs = Math.max(v.maxMs, ms);
    if (v.t0 === null) v.t0 = performance.now() - ms;
  }

  function onEvent(ev) {
    const d = ev.data && typeof ev.data === 'object' ? ev.data : {};
    switch (ev.kind) {
      case 'start':
        if (v.t0 === null) v.t0 = performance.now();
        if (Array.isArray(d.legs)) d.legs.forEach((l) => l && leg(l.index, l.name));
        break;
      case 'speech': {
        const l = leg(d.leg, d.name);
        const ms = num(d.ms, -1);
        if (!l || ms < 0) break;
        seen(ms);
        const open = l.segs.length && l.segs[l.segs.length - 1].end === null ? l.segs[l.segs.length - 1] : null;
        if (l.segs.length >= MAX_MARKS && !open) break;
        if (d.state === 'start' && !open) l.segs.push({ start: ms, end: null });
        if (d.state === 'stop') {
          if (open) open.end = Math.max(ms, open.start);
          else l.segs.push({ start: Math.max(0, ms - num(d.duration_ms)), end: ms });
        }
        break;
      }
      case 'dtmf': {
        const l = leg(d.leg, d.name);
        if (!l || l.digits.length >= MAX_MARKS) break;
        const ms = num(d.ms, 0);
        seen(ms + num(d.duration_ms));
        const digit = d.masked ? '•' : String(d.digit ?? '?').slice(0, 4);
        l.digits.push({ digit, ms, dur: num(d.duration_ms), source: String(d.source ?? '').slice(0, 16) });
        break;
      }
      case 'level': {
        const l = leg(d.leg, d.name);
        if (!l) break;
        seen(num(d.ms));
        v.levels++;
        const db = num(d.rms_dbfs, -100);
        const lv = l.level || { updates: 0, min: db, max: db };
        lv.db = db;
        lv.peak = num(d.peak_dbfs, -100);
        lv.at = performance.now();
        lv.updates++;
        lv.min = Math.min(lv.min, db);
        lv.max = Math.max(lv.max, db);
        l.level = lv;
        break;
      }
      case 'levels': // at the end: each leg's speech level over the call
        if (Array.isArray(d.legs)) {
          for (const x of d.legs) {
            const l = x && leg(x.leg, x.name);
            if (l && typeof x.active_dbfs === 'number') l.avg = x.active_dbfs;
          }
        }
        break;
      case 'end':
        v.endedAt = cursor();
        break;
      case 'state':
        if (ev.state === 'ended' && v.endedAt === null && v.t0 !== null) v.endedAt = cursor();
        break;
      case 'gap':
        if (v.gaps.length < MAX_MARKS) {
          const g = { leg: num(d.leg, -1), from: num(d.from), to: num(d.to), cause: String(d.cause ?? '?').slice(0, 32) };
          if (g.to >= g.from) { v.gaps.push(g); leg(g.leg); seen((g.to + 1) * 20); }
        }
        break;
      case 'accounting':
        addAccounting(d);
        break;
      case 'speech_summary':
        v.speechSummary = d;
        break;
      default:
        return;
    }
    render();
  }

  function addAccounting(d) {
    if (!Array.isArray(d.legs)) return;
    v.accountings++;
    for (const a of d.legs) {
      const l = leg(a && a.leg, a && a.name);
      if (!l) continue;
      const s = v.acct.get(l.index) || { processed: 0, gap_filled: 0, replayed: 0, duplicates: 0, paused: 0, lost: 0, by: {}, first: null, last: null };
      for (const k of ['processed', 'gap_filled', 'replayed', 'duplicates', 'paused', 'lost']) s[k] += num(a[k]);
      if (a.lost_by_cause && typeof a.lost_by_cause === 'object') {
        for (const [cause, n] of Object.entries(a.lost_by_cause)) s.by[cause.slice(0, 32)] = (s.by[cause.slice(0, 32)] || 0) + num(n);
      }
      if (typeof a.first_seq === 'number') s.first = s.first === null ? a.first_seq : Math.min(s.first, a.first_seq);
      if (typeof a.last_seq === 'number') s.last = s.last === null ? a.last_seq : Math.max(s.last, a.last_seq);
      v.acct.set(l.index, s);
    }
  }

  // overtalk returns the intervals in which two or more legs speak (open segments run to now).
  function overtalk(now) {
    const pts = [];
    for (const l of v.legs.values()) {
      for (const s of l.segs) {
        const end = s.end === null ? now : s.end;
        if (end > s.start) pts.push([s.start, 1], [end, -1]);
      }
    }
    pts.sort((a, b) => a[0] - b[0] || a[1] - b[1]); // ends before starts at the same time
    const out = [];
    let n = 0, from = 0;
    for (const [t, dn] of pts) {
      const was = n;
      n += dn;
      if (was < 2 && n >= 2) from = t;
      if (was >= 2 && n < 2 && t > from) out.push([from, t]);
    }
    return out;
  }

  // span is the axis length: growing in 5 s steps while the call runs, the call's length after.
  function span(now) {
    if (v.endedAt !== null) return Math.max(1000, Math.ceil(now / 1000) * 1000);
    return Math.max(10000, Math.ceil((now + 1000) / 5000) * 5000);
  }

  function place(el, from, to, total) {
    el.style.left = `${(100 * from) / total}%`;
    if (to !== undefined) el.style.width = `${Math.max(0.2, (100 * (to - from)) / total)}%`;
  }

  const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;

  function render() {
    const now = cursor();
    const total = span(now);
    $('clock').textContent = secs(now);
    const ot = overtalk(now);
    for (const l of v.legs.values()) {
      const track = l.row.querySelector('.track');
      track.textContent = '';
      for (const [a, b] of ot) {
        const sh = document.createElement('div');
        sh.className = 'shade';
        place(sh, a, b, total);
        track.append(sh);
      }
      l.segs.forEach((s, i) => {
        const seg = document.createElement('div');
        seg.className = s.end === null ? 'seg open' : 'seg';
        const end = s.end === null ? now : s.end;
        seg.dataset.start = String(Math.round(s.start));
        seg.dataset.end = String(Math.round(end));
        seg.title = `${l.name}: ${secs(s.start)} – ${secs(end)}`;
        seg.dataset.n = String(i);
        place(seg, s.start, end, total);
        track.append(seg);
      });
      for (const g of v.gaps) {
        if (g.leg !== l.index) continue;
        const m = document.createElement('div');
        m.className = 'gapmark';
        m.dataset.cause = g.cause;
        m.title = `${l.name}: frames ${g.from}–${g.to} lost, cause ${g.cause}`;
        place(m, g.from * 20, (g.to + 1) * 20, total);
        track.append(m);
      }
      for (const dg of l.digits) {
        const m = document.createElement('div');
        m.className = 'dtmf';
        m.dataset.digit = dg.digit;
        m.dataset.ms = String(Math.round(dg.ms));
        m.title = `${l.name}: digit ${dg.digit} at ${secs(dg.ms)} (${dg.dur} ms, ${dg.source})`;
        const lab = document.createElement('span');
        lab.className = 'digit';
        lab.textContent = dg.digit;
        m.append(lab);
        place(m, dg.ms, undefined, total);
        track.append(m);
      }
      const meter = l.row.querySelector('.meter');
      const lv = l.level;
      const live = lv && (v.endedAt === null ? performance.now() - lv.at < METER_STALE_MS : true);
      const avg = v.endedAt !== null && typeof l.avg === 'number';
      const db = avg ? l.avg : live ? lv.db : -100;
      const frac = Math.min(1, Math.max(0, (db - METER_FLOOR) / -METER_FLOOR));
      meter.querySelector('.fill').style.width = `${(100 * frac).toFixed(1)}%`;
      meter.classList.toggle('loud', db > -12);
      meter.dataset.dbfs = String(db);
      if (lv) {
        meter.dataset.updates = String(lv.updates);
        meter.dataset.min = String(lv.min);
        meter.dataset.max = String(lv.max);
      }
      l.row.querySelector('.db').textContent = lv || avg ? `${db <= -100 ? '–∞' : db.toFixed(0)} dBFS${avg ? ' avg' : ''}` : '– dBFS';
      meter.title = avg ? `${l.name}: speech level over the call` : `${l.name}: level over the last ${METER_STALE_MS} ms at most`;
    }
    const otTrack = $('overtalk-track');
    otTrack.textContent = '';
    let otMS = 0;
    for (const [a, b] of ot) {
      const el = document.createElement('div');
      el.className = 'overtalk';
      el.dataset.start = String(Math.round(a));
      el.dataset.end = String(Math.round(b));
      el.title = `overtalk ${secs(a)} – ${secs(b)}`;
      place(el, a, b, total);
      otTrack.append(el);
      otMS += b - a;
    }
    $('overtalk-ms').textContent = secs(otMS);
    if (v.t0 !== null && v.endedAt === null) {
      for (const track of document.querySelectorAll('#view .row:not(.axis-row) .track')) {
        const cur = document.createElement('div');
        cur.className = 'cursor';
        place(cur, now, undefined, total);
        track.append(cur);
      }
    }
    renderAxis(total);
    const note = $('meter-note');
    note.hidden = !(v.levels === 0 && v.t0 !== null && now > 3000);
    note.textContent = 'No level events for the meters: the pool runs the levels processor without meter_ms (docs/processors.md).';
    if (v.accountings > 0) renderAccounting();
  }

  function renderAxis(total) {
    const axis = $('axis');
    axis.textContent = '';
    const step = [1000, 2000, 5000, 10000, 30000, 60000, 300000].find((s) => total / s <= 12) || 600000;
    for (let t = 0; t <= total; t += step) {
      const tick = document.createElement('span');
      tick.className = 'tick';
      tick.textContent = `${t / 1000}s`;
      place(tick, t, undefined, total);
      axis.append(tick);
    }
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.append(td);
    return td;
  }

  function renderAccounting() {
    $('accounting').hidden = false;
    const body = $('acct-legs');
    body.textContent = '';
    let lost = 0;
    const talk = new Map();
    if (v.speechSummary && Array.isArray(v.speechSummary.legs)) {
      for (const s of v.speechSummary.legs) if (s) talk.set(num(s.leg, -1), num(s.talk_ms));
    }
    for (const l of [...v.legs.values()].sort((a, b) => a.index - b.index)) {
      const a = v.acct.get(l.index);
      if (!a) continue;
      lost += a.lost;
      const tr = document.createElement('tr');
      tr.dataset.leg = String(l.index);
      tr.dataset.lost = String(a.lost);
      tr.dataset.processed = String(a.processed);
      cell(tr, l.name);
      cell(tr, a.first === null || a.last === null ? '–' : String(a.last - a.first + 1));
      cell(tr, String(a.processed));
      cell(tr, String(a.lost), a.lost > 0 ? 'bad' : 'good');
      const by = Object.entries(a.by).filter(([, n]) => n > 0).map(([c, n]) => `${c} ${n}`).join(', ');
      cell(tr, by || 'none');
      cell(tr, String(a.duplicates));
      cell(tr, String(a.replayed));
      cell(tr, String(a.gap_filled));
      cell(tr, String(a.paused));
      cell(tr, talk.has(l.index) ? secs(talk.get(l.index)) : secs(l.segs.reduce((n, s) => n + ((s.end ?? s.start) - s.start), 0)));
      cell(tr, l.digits.map((d) => d.digit).join('') || '–');
      body.append(tr);
    }
    document.body.dataset.lost = String(lost);
    $('verdict').textContent = lost === 0 ? '· no frame lost' : `· ${lost} frame${lost === 1 ? '' : 's'} lost`;
    $('verdict').className = lost === 0 ? 'good' : 'bad';
    const gaps = $('gaps');
    gaps.textContent = '';
    for (const g of v.gaps) {
      const li = document.createElement('li');
      li.dataset.cause = g.cause;
      const l = v.legs.get(g.leg);
      li.textContent = `${l ? l.name : `leg ${g.leg}`}: frames ${g.from}–${g.to} (${g.to - g.from + 1}, ${secs((g.to - g.from + 1) * 20)}), cause ${g.cause}`;
      gaps.append(li);
    }
    $('gap-count').textContent = `(${v.gaps.length})`;
    const ss = v.speechSummary;
    $('acct-note').textContent = ss
      ? `Speech: ${secs(num(ss.duration_ms))} long, overtalk ${secs(num(ss.overtalk_ms))}, silence ${secs(num(ss.silence_ms))} (longest ${secs(num(ss.longest_silence_ms))}).`
      : '';
  }

  reset();
  setInterval(() => { if (v.t0 !== null && v.endedAt === null) render(); }, 200);
  return { reset, onEvent };
})();
