// The operator console: a page on signal's room API (docs/api.md), served
// from the binary with the demo page, no framework. Log in with the admin
// token (kept in this tab's sessionStorage, sent as a Bearer header, never
// in a URL); the page then polls /v1/stats, /v1/nodes, /v1/rooms and each
// room's participants every second, shows them, charts packets/s, bitrate
// and participants over the last five minutes (canvas), and acts: remove a
// participant, mute one's tracks, close a room, mint a token.

import { show, hide } from './messages.js';

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
const WINDOW_S = 300; // the charts' time span
const MAX_ROOMS = 50; // rooms whose participants are fetched each poll

const state = {
  token: sessionStorage.getItem('traverse-admin') || '',
  timer: 0,
  busy: false,
  polls: 0,
  errors: [],
  rooms: [], // the last room details
  stats: null,
  nodes: [],
  prev: null, // the previous stats and its time, for the counters' rates
};

// ---- messages (web/messages.js, as in the demo page) ----

function say(level, text, key = '') {
  if (level === 'error') state.errors.push(text);
  show(level, text, key);
}

const unsay = hide;

// ---- the API ----

class APIError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: 'Bearer ' + state.token } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new APIError(0, `cannot reach the server (${e.message})`);
  }
  let data = null;
  try { data = await res.json(); } catch { /* no JSON */ }
  if (!res.ok) {
    const why = (data && data.error) || res.statusText;
    if (res.status === 401) throw new APIError(401, `the admin token was refused (${why})`);
    if (res.status === 404 && path.startsWith('v1/stats')) throw new APIError(404, 'this server has no room API: start signal with --admin-token (serve: --signal-admin-token)');
    throw new APIError(res.status, `${method} /${path}: ${res.status} ${why}`);
  }
  return data;
}

const enc = encodeURIComponent;

// ---- charts ----

const PALETTE = ['#4af', '#3c9', '#fc3', '#f8a', '#aaf', '#f84', '#8ef', '#cf6'];

// Chart draws time series on a canvas: the last WINDOW_S seconds, one
// line per series (a series appears with the first value of its name),
// the y axis from 0 to the largest value shown.
class Chart {
  constructor(canvas) {
    this.canvas = canvas;
    this.series = []; // [{name, color}]
    this.points = []; // [{t, values: {name: value}}]
  }

  push(t, values) {
    for (const name of Object.keys(values)) {
      if (!this.series.some((x) => x.name === name)) this.series.push({ name, color: PALETTE[this.series.length % PALETTE.length] });
    }
    this.points.push({ t, values });
    while (this.points.length && this.points[0].t < t - WINDOW_S * 1000) this.points.shift();
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 480, h = c.clientHeight || 160;
    if (c.width !== w * dpr) { c.width = w * dpr; c.height = h * dpr; }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.fillStyle = '#101010';
    g.fillRect(0, 0, w, h);
    const left = 48, right = w - 8, top = 8, bottom = h - 20;
    let max = 0;
    for (const p of this.points) for (const v of Object.values(p.values)) max = Math.max(max, v || 0);
    max = niceMax(max);
    // Grid and labels.
    g.strokeStyle = '#333';
    g.fillStyle = '#888';
    g.font = '11px system-ui, sans-serif';
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = bottom - ((bottom - top) * i) / 4;
      g.beginPath(); g.moveTo(left, y); g.lineTo(right, y); g.stroke();
      g.fillText(short((max * i) / 4), 4, y + 4);
    }
    const now = this.points.length ? this.points[this.points.length - 1].t : Date.now();
    for (let m = 0; m <= WINDOW_S / 60; m++) {
      const x = right - ((right - left) * m * 60) / WINDOW_S;
      g.fillText(m ? `-${m}m` : 'now', x - 12, h - 5);
    }
    const x = (t) => right - ((right - left) * (now - t)) / (WINDOW_S * 1000);
    const y = (v) => bottom - ((bottom - top) * (v || 0)) / max;
    if (!this.series.length) {
      g.fillStyle = '#888';
      g.fillText('no counters from this server (a standalone signal has none)', left + 8, top + 30);
    }
    let lx = left + 8, ly = top + 12;
    for (const s of this.series) {
      g.strokeStyle = s.color;
      g.lineWidth = 2;
      g.beginPath();
      this.points.forEach((p, j) => { if (j) g.lineTo(x(p.t), y(p.values[s.name])); else g.moveTo(x(p.t), y(p.values[s.name])); });
      g.stroke();
      g.fillStyle = s.color;
      const last = this.points.length ? this.points[this.points.length - 1].values[s.name] : 0;
      const label = `${s.name} ${short(last || 0)}`;
      const wl = g.measureText(label).width + 14;
      if (lx + wl > right) { lx = left + 8; ly += 13; }
      g.fillText(label, lx, ly);
      lx += wl;
    }
  }
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function short(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + 'M';
  if (v >= 1e4) return Math.round(v / 1e3) + 'k';
  if (v >= 100) return String(Math.round(v));
  return String(Math.round(v * 10) / 10);
}

const charts = {
  packets: new Chart($('chart-packets')),
  bitrate: new Chart($('chart-bitrate')),
  people: new Chart($('chart-people')),
};

// Names for the counters of docs/api.md (Counters); others are shown
// with their own name.
const LABELS = {
  sfu_rtp_received_total: 'SFU received', sfu_rtp_forwarded_total: 'SFU forwarded',
  turn_relayed_packets_total: 'TURN relayed', turn_relayed_bytes_total: 'TURN relayed',
  mediaproxy_packets_total: 'SIP media', mediaproxy_bytes_total: 'SIP media',
  sfu_sessions: 'SFU sessions', sfu_rooms: 'SFU rooms', turn_allocations: 'TURN allocations',
  sipgw_calls: 'SIP calls', sip_calls: 'SIP calls',
};
const label = (k) => LABELS[k] || k.replace(/_total$/, '').replace(/_/g, ' ');
const isBytes = (k) => k.endsWith('_bytes_total');

// ---- rendering ----

function cell(tr, text, cls = '') {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.append(td);
  return td;
}

function button(text, title, fn) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.title = title;
  b.onclick = fn;
  return b;
}

// rates turns the counters of /v1/stats that only grow (names ending in
// _total) into per-second rates since the previous poll.
function rates(stats, t) {
  const out = {};
  const prev = state.prev;
  state.prev = { stats, t };
  if (!prev) return out;
  const dt = (t - prev.t) / 1000;
  for (const [k, v] of Object.entries(stats.counters || {})) {
    const before = (prev.stats.counters || {})[k];
    if (!k.endsWith('_total') || before === undefined || dt <= 0) continue;
    out[k] = Math.max(0, (v - before) / dt);
  }
  return out;
}

// packetRates: packets per second by counter (every _total counter that
// is not of bytes), for the packets chart.
function packetRates(r) {
  const out = {};
  for (const [k, v] of Object.entries(r)) if (!isBytes(k)) out[label(k)] = v;
  return out;
}

// bitRates: kbit/s by byte counter, and the participants' in and out.
function bitRates(r, bin, bout) {
  const out = {};
  for (const [k, v] of Object.entries(r)) if (isBytes(k)) out[label(k)] = (v * 8) / 1000;
  out['participants in'] = bin / 1000;
  out['participants out'] = bout / 1000;
  return out;
}

function renderTotals(stats, r) {
  const el = $('totals');
  el.textContent = '';
  const tiles = [['nodes', stats.nodes], ['rooms', stats.rooms], ['participants', stats.participants]];
  for (const [k, v] of Object.entries(stats.counters || {})) {
    if (!k.endsWith('_total')) tiles.push([label(k), Math.round(v * 100) / 100]);
  }
  for (const [k, v] of Object.entries(r)) tiles.push([`${label(k)} ${isBytes(k) ? 'kbit/s' : 'packets/s'}`, Math.round(isBytes(k) ? (v * 8) / 1000 : v)]);
  for (const [name, v] of tiles) {
    const d = document.createElement('div');
    d.className = 'tile';
    d.dataset.name = name;
    const b = document.createElement('b');
    b.textContent = String(v ?? 0);
    d.append(b, document.createTextNode(name));
    el.append(d);
  }
}

function renderNodes(nodes) {
  const body = $('nodes').querySelector('tbody');
  body.textContent = '';
  for (const n of nodes) {
    const tr = document.createElement('tr');
    cell(tr, n.id);
    cell(tr, n.region || '');
    cell(tr, n.public || n.udp || '');
    cell(tr, n.load !== undefined ? `${Math.round(n.load * 100)}%` : String(n.peers ?? ''), 'num');
    cell(tr, Array.isArray(n.rooms) ? n.rooms.join(', ') : String(n.rooms ?? ''));
    cell(tr, n.draining ? 'draining' : 'up');
    body.append(tr);
  }
  $('node-count').textContent = String(nodes.length);
}

// roomNodes is the nodes of a room spanning several (the cascade), with
// their participants: " (spans n1 ×2, n2 ×1)"; empty on one node.
function roomNodes(r) {
  const ns = r.nodes || [];
  if (ns.length < 2) return '';
  return ` (spans ${ns.map((n) => `${n.node} ×${n.participants}`).join(', ')})`;
}

function renderRooms(rooms) {
  const el = $('rooms');
  el.textContent = '';
  $('room-count').textContent = String(rooms.length);
  if (!rooms.length) {
    const p = document.createElement('p');
    p.className = 'empty';
    p.textContent = 'no room: nobody is connected through this signal server';
    el.append(p);
  }
  for (const r of rooms) {
    const box = document.createElement('div');
    box.className = 'room';
    box.dataset.room = r.name;
    const h = document.createElement('h3');
    const name = document.createElement('span');
    name.textContent = r.name;
    const meta = document.createElement('span');
    meta.className = 'meta';
    meta.textContent = `node ${r.node || '?'}${roomNodes(r)} · ${(r.participants || []).length} participants` +
      (r.elsewhere ? ` (+${r.elsewhere} through other signal servers)` : '') + (r.started ? ` · since ${time(r.started)}` : '');
    h.append(name, meta, button('Close room', 'remove every participant', () => act(`close room ${r.name}`,
      () => api('DELETE', `v1/rooms/${enc(r.name)}`, reason()))));
    const table = document.createElement('table');
    table.innerHTML = '<thead><tr><th>identity</th><th>id</th><th>node</th><th>client</th><th>path</th><th>in kbit/s</th><th>out kbit/s</th><th>tracks</th><th>joined</th><th></th></tr></thead>';
    const body = document.createElement('tbody');
    for (const p of r.participants || []) {
      const tr = document.createElement('tr');
      tr.dataset.participant = p.id;
      tr.dataset.identity = p.identity;
      cell(tr, p.identity);
      cell(tr, p.id);
      cell(tr, p.node || '');
      cell(tr, p.client || '');
      cell(tr, p.path || '');
      cell(tr, String(Math.round((p.bitrateIn || 0) / 1000)), 'num');
      cell(tr, String(Math.round((p.bitrateOut || 0) / 1000)), 'num');
      const tracks = p.tracks || [];
      cell(tr, tracks.map((t) => `${t.kind}${t.codec ? ' ' + t.codec : ''}${t.layers && t.layers.length > 1 ? ' ×' + t.layers.length : ''}${t.muted ? ' (muted)' : ''}`).join(', ') || (p.publish ? '—' : 'viewer'));
      cell(tr, time(p.joined));
      const td = cell(tr, '');
      const muted = tracks.length > 0 && tracks.every((t) => t.muted);
      if (tracks.length) {
        td.append(button(muted ? 'Unmute' : 'Mute', 'mute every track it publishes', () => act(`${muted ? 'unmute' : 'mute'} ${p.identity}`,
          () => api('POST', `v1/rooms/${enc(r.name)}/participants/${enc(p.id)}/mute`, { track: '*', muted: !muted }))));
      }
      td.append(button('Remove', 'remove from the room (the reason above is shown to them)', () => act(`remove ${p.identity}`,
        () => api('DELETE', `v1/rooms/${enc(r.name)}/participants/${enc(p.id)}`, reason()))));
      body.append(tr);
    }
    table.append(body);
    box.append(h, table);
    el.append(box);
  }
}

// reason is the optional body of a removal: the text in the reason field.
function reason() {
  const r = $('reason') ? $('reason').value.trim() : '';
  return r ? { reason: r.slice(0, 200) } : undefined;
}

function time(s) {
  if (!s) return '';
  const d = new Date(s);
  return isNaN(d) ? s : d.toLocaleTimeString();
}

async function act(what, fn) {
  try {
    const r = await fn();
    say('info', `${what}: done ${JSON.stringify(r)}`, 'act');
    poll();
  } catch (e) {
    say('error', `${what}: ${e.message}`, 'act');
  }
}

// ---- polling ----

async function poll() {
  if (state.busy || !state.token) return;
  state.busy = true;
  try {
    const [stats, nodes, rooms] = await Promise.all([api('GET', 'v1/stats'), api('GET', 'v1/nodes'), api('GET', 'v1/rooms')]);
    const details = await Promise.all((rooms.rooms || []).slice(0, MAX_ROOMS).map((r) =>
      api('GET', `v1/rooms/${enc(r.name)}`).catch((e) => (e.status === 404 ? null : Promise.reject(e)))));
    state.stats = stats;
    state.nodes = nodes.nodes || [];
    state.rooms = details.filter(Boolean);
    state.polls++;
    const t = Date.now();
    const r = rates(stats, t);
    renderTotals(stats, r);
    renderNodes(state.nodes);
    renderRooms(state.rooms);
    let bin = 0, bout = 0;
    for (const room of state.rooms) for (const p of room.participants || []) { bin += p.bitrateIn || 0; bout += p.bitrateOut || 0; }
    charts.packets.push(t, packetRates(r));
    charts.bitrate.push(t, bitRates(r, bin, bout));
    charts.people.push(t, { participants: stats.participants || 0, rooms: stats.rooms || 0 });
    unsay('poll');
    $('status').textContent = `logged in · ${stats.nodes} node${stats.nodes === 1 ? '' : 's'}, ${stats.rooms} room${stats.rooms === 1 ? '' : 's'}, ${stats.participants} participant${stats.participants === 1 ? '' : 's'} · updated ${new Date(t).toLocaleTimeString()}`;
  } catch (e) {
    if (e.status === 401 || e.status === 404) {
      say('error', e.message, 'login');
      logout(false);
    } else {
      say('warning', `update failed: ${e.message}`, 'poll');
    }
  } finally {
    state.busy = false;
  }
}

async function login(token) {
  state.token = token;
  try {
    await api('GET', 'v1/stats');
  } catch (e) {
    say('error', e.message, 'login');
    logout(false);
    return;
  }
  sessionStorage.setItem('traverse-admin', token);
  unsay('login');
  $('admin').value = '';
  $('admin').hidden = true;
  $('signin').hidden = true;
  $('signout').hidden = false;
  $('dash').hidden = false;
  clearInterval(state.timer);
  state.timer = setInterval(poll, POLL_MS);
  poll();
}

function logout(clearMessages = true) {
  clearInterval(state.timer);
  state.token = '';
  sessionStorage.removeItem('traverse-admin');
  $('admin').hidden = false;
  $('signin').hidden = false;
  $('signout').hidden = true;
  $('dash').hidden = true;
  $('status').textContent = 'not logged in';
  if (clearMessages) unsay('login');
}

// The reason field sits above the rooms, so re-rendering them each poll
// does not lose what is typed.
(() => {
  const label = document.createElement('label');
  label.textContent = 'reason shown to removed participants ';
  const input = document.createElement('input');
  input.id = 'reason';
  input.maxLength = 200;
  input.placeholder = 'optional';
  label.append(input);
  $('rooms').before(label);
})();

$('login').addEventListener('submit', (e) => { e.preventDefault(); login($('admin').value.trim()); });
$('signout').addEventListener('click', () => logout());
$('mint').addEventListener('submit', async (e) => {
  e.preventDefault();
  const body = { room: $('mint-room').value.trim(), identity: $('mint-identity').value.trim(), publish: $('mint-pub').checked, subscribe: $('mint-sub').checked };
  if ($('mint-ttl').value.trim()) body.ttl = $('mint-ttl').value.trim();
  try {
    const r = await api('POST', 'v1/tokens', body);
    const link = new URL(`./?room=${enc(r.room)}&token=${enc(r.token)}`, location.href).href;
    $('minted').textContent = `token for ${r.identity} in ${r.room}, expires ${time(r.expires)}: ${r.token}\njoin link: ${link}`;
  } catch (err) {
    say('error', `mint: ${err.message}`, 'mint');
  }
});

// window.traverseConsole is for tests.
window.traverseConsole = {
  get polls() { return state.polls; },
  get rooms() { return state.rooms; },
  get stats() { return state.stats; },
  get errors() { return state.errors.slice(); },
  charts,
};

if (state.token) login(state.token);
