// The demo room, built on the client module traverse.js (docs/client-js.md):
// join with a room name, share camera and microphone, see and hear
// everyone else in a grid with a per-connection overlay (path, bitrate,
// RTT, loss). What goes wrong is said in the page (#messages): a bad or
// expired token, no SFU node, a room name the bus refuses, a camera that
// is denied or missing (the page then joins as a viewer, on purpose), a
// dropped connection (it reconnects). Each received video tells the SFU
// at what size it is shown (a layer message), so a simulcast publisher's
// larger layers go only where they are seen.
import { Room, RoomError, States, ROOM_NAME, IDENTITY, fetchDemoToken } from './traverse.js';
import { Meter, pathOf } from './stats.js';
import { show, hide } from './messages.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const summaryMeter = new Meter();

const state = {
  room: null,
  local: null, // the local MediaStream, or null (viewer)
  relay: false,
  tiles: new Map(), // stream id -> tile
  meter: new Meter(),
  errors: [], // "class: message" of every error, for tests
  messages: [], // {level, text} shown in the page
  layers: [], // the layer messages sent
  timer: 0,
  speaking: new Set(),
};

// ?debug=1 logs the signaling exchange to the console.
const debug = params.get('debug') === '1' ? (...a) => console.log('[signal]', ...a) : null;

// say shows a message in the page: level 'error', 'warning' or 'info'.
// key, when given, replaces an earlier message with the same key.
function say(level, text, key = '') {
  if (level === 'error') state.errors.push(text);
  state.messages.push({ level, text });
  show(level, text, key);
}

const unsay = hide;

// explain turns a RoomError into what the user should know and do.
function explain(err) {
  const msg = err.message || String(err);
  switch (err.class) {
    case 'unauthorized':
      if (/expired/.test(msg)) return `Your token has expired (${msg}): get a new one and join again.`;
      if (/not yet valid/.test(msg)) return `Your token is not valid yet (${msg}): check the clocks, or get a new one.`;
      return `The server refused the token (${msg}): get a new one (traverse token) and join again.`;
    case 'unavailable':
      if (/no sfu node/i.test(msg)) return `No media server (SFU node) is available right now (${msg}): it is down or still starting. Try again in a moment.`;
      return `The media server is unavailable (${msg}): try again in a moment.`;
    case 'forbidden':
      return `Not allowed: ${msg}.`;
    case 'rate-limited':
      return `Too many messages: ${msg}.`;
    case 'network':
      return `Cannot reach the signaling server (${msg}): check the address and your network.`;
    case 'removed':
      return `You were removed from the room: ${msg.replace(/^removed by the operator: ?/, '') || 'by the operator'}. Join again if you are allowed to.`;
    case 'input':
      return msg;
    default:
      return `${err.class || 'error'}: ${msg}`;
  }
}

// pathLabel says where the media goes (the room's path event).
const pathLabel = {
  'p2p-direct': 'media: peer to peer (direct)',
  'p2p-relay': 'media: peer to peer (through TURN)',
  sfu: 'media: through the SFU',
  waiting: 'media: waiting for someone to join',
};

function status(text) { $('status').textContent = text; }

// lock disables the form while in a room (or joining) and enables it
// again after leaving or a failure.
function lock(inRoom) {
  for (const id of ['room', 'identity', 'token', 'relay']) $(id).disabled = inRoom;
  $('go').disabled = inRoom;
  $('go').hidden = inRoom;
  $('leave').hidden = !inRoom;
}

function updateStatus() {
  const r = state.room;
  if (!r) { status('not in a room'); return; }
  const m = r.info;
  const n = r.participants.size + 1;
  switch (r.state) {
    case States.CONNECTING: status(m ? `reconnecting to room ${m.room} as ${m.identity}…` : 'connecting…'); break;
    case States.JOINED: {
      const role = m.publish === false || !state.local ? 'viewer' : 'publishing';
      status(`You are ${m.identity} in room ${m.room} (${role}) on node ${m.node}${m.region ? ' (' + m.region + ')' : ''} · ${n} participant${n === 1 ? '' : 's'}${r.path ? ' · ' + pathLabel[r.path] : ''}`);
      break;
    }
    case States.RECONNECTING: status(`connection lost: reconnecting to room ${m.room} as ${m.identity}…`); break;
    case States.REJOINING: status(`moving to another media server (room ${m.room}, as ${m.identity})…`); break;
    case States.FAILED: status('not in a room (see the message below)'); break;
    default: status('not in a room');
  }
}

async function join(roomName, identity, relay) {
  lock(true);
  for (const li of [...$('messages').querySelectorAll('li.error')]) li.remove();
  state.relay = relay;
  try {
    if (!ROOM_NAME.test(roomName)) {
      throw new RoomError('input', roomName.length > 64
        ? `The room name is too long (${roomName.length} characters): at most 64 of A-Z a-z 0-9 _ -.`
        : 'The room name must be 1-64 of A-Z a-z 0-9 _ - (no spaces).');
    }
    if (identity && !IDENTITY.test(identity)) {
      throw new RoomError('input', `Your name must be at most 64 of A-Z a-z 0-9 _ - . @ : (got "${identity.slice(0, 80)}").`);
    }
    const token = $('token').value.trim() || await getToken(roomName, identity);
    status('camera and microphone…');
    state.local = await localMedia();
    if (state.local) addTile('local', state.local, 'you', true);
    updateDeviceButtons();
    const room = new Room({ iceTransportPolicy: relay ? 'relay' : 'all', simulcast: params.get('simulcast') === '1', debug });
    state.room = room;
    wire(room);
    status('connecting…');
    await room.join(token, { media: state.local });
    listDevices();
  } catch (e) {
    const err = e instanceof RoomError ? e : new RoomError('internal', String(e.message || e));
    if (!state.room || state.room.state !== States.FAILED) say('error', explain(err)); // a failed room said it already
    cleanup();
  }
}

async function getToken(roomName, identity) {
  try {
    return await fetchDemoToken(roomName, identity);
  } catch (e) {
    if (e.class === 'unavailable') $('token').hidden = false;
    throw e;
  }
}

// localMedia returns camera and microphone, else the microphone alone,
// else null; it says in the page what is missing and why, and that the
// page joins without it (as a viewer when nothing is left).
async function localMedia() {
  const cam = $('camera').value, mic = $('mic').value;
  const video = { width: 640, height: 480, ...(cam ? { deviceId: { exact: cam } } : {}) };
  const audio = mic ? { deviceId: { exact: mic } } : true;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    say('warning', 'This page cannot use a camera or microphone here (it needs https or localhost): joining as a viewer.', 'media');
    return null;
  }
  let first;
  try {
    return await navigator.mediaDevices.getUserMedia({ audio, video });
  } catch (e) {
    first = e;
    state.errors.push(`getUserMedia audio+video: ${e.name}: ${e.message}`);
  }
  if (first.name !== 'NotAllowedError') {
    try {
      const s = await navigator.mediaDevices.getUserMedia({ audio });
      say('warning', `${why(first, 'camera')}: joining with the microphone only.`, 'media');
      return s;
    } catch (e) {
      state.errors.push(`getUserMedia audio: ${e.name}: ${e.message}`);
    }
  }
  say('warning', `${why(first, 'camera and microphone')}: joining as a viewer on purpose (you see and hear the others; they do not see or hear you).`, 'media');
  return null;
}

function why(e, what) {
  switch (e.name) {
    case 'NotAllowedError': return `Access to the ${what} was denied`;
    case 'NotFoundError': case 'OverconstrainedError': return `No ${what.replace(' and ', ' or ')} found`;
    case 'NotReadableError': return `The ${what} is in use by another program`;
    default: return `The ${what} could not be opened (${e.name}: ${e.message})`;
  }
}

function wire(room) {
  room.on('state', () => { updateStatus(); });
  room.on('joined', () => { unsay('net'); updateStatus(); renderPeople(); startStats(); });
  room.on('error', (err) => {
    state.errors.push(`${err.class}: ${err.message}`);
    if (room.state === States.FAILED || err.fatal) {
      if (room.state === States.FAILED) { say('error', explain(err), 'fatal'); cleanup(); }
      return;
    }
    say('warning', explain(err));
  });
  room.on('warning', (w) => { say('warning', explain(w), 'warn-' + w.class); });
  room.on('reconnecting', (r) => { say('warning', `Connection lost: reconnecting (attempt ${r.attempt}, in ${(r.delay / 1000).toFixed(1)} s)…`, 'net'); });
  // A rejoin (the server moves the session) or a reconnect (the socket
  // dropped) ends with one message saying what happened.
  let moved = '';
  room.on('rejoin', (r) => {
    moved = r.reason === 'drain' ? 'is draining' : 'failed';
    say('info', `The media server ${moved}: moving you to another one…`, 'net');
  });
  room.on('reconnected', (m) => {
    say('info', moved ? `The media server ${moved}: moved you to node ${m.node}, back in the room.` : `Reconnected: back in the room (node ${m.node}).`, 'net');
    moved = '';
  });
  room.on('mute', (m) => {
    const kinds = [...new Set(m.tracks.map((t) => (t.kind === 'audio' ? 'microphone' : 'camera')))].join(' and ') || 'track';
    const verb = m.tracks.length > 1 ? 'are' : 'is';
    const text = m.message ? m.message[0].toUpperCase() + m.message.slice(1) : 'The operator changed your tracks';
    say('warning', `${text}: your ${kinds} ${m.muted ? verb + ' muted' : verb + ' on again'}.`, 'mute');
    updateDeviceButtons();
  });
  room.on('participantJoined', () => { renderPeople(); updateStatus(); });
  room.on('path', () => updateStatus());
  room.on('participantLeft', () => { renderPeople(); updateStatus(); });
  room.on('trackPublished', ({ track, participant }) => {
    const tile = state.tiles.get(track.streamId);
    if (tile && participant) tile.name.textContent = participant.identity;
  });
  room.on('track', ({ track, stream }) => {
    const tile = addTile(stream.id, stream, room.identityOf(stream.id) || 'participant', false);
    if (tile.stream !== stream && !tile.stream.getTracks().includes(track)) tile.stream.addTrack(track);
    if (track.kind === 'video') reportSize(tile, stream.id);
  });
  room.on('trackEnded', ({ stream }) => {
    if (stream && stream.getTracks().length === 0) removeTile(stream.id);
    if (!stream) for (const [id, tile] of state.tiles) if (id !== 'local' && tile.stream.getTracks().every((t) => t.readyState === 'ended')) removeTile(id);
  });
  room.on('speakers', (list) => {
    const loud = new Set(list.filter((s) => s.level > 0).map((s) => s.identity));
    state.speaking = loud;
    for (const [id, tile] of state.tiles) {
      const name = id === 'local' ? room.info && room.info.identity : room.identityOf(id);
      tile.el.classList.toggle('speaking', loud.has(name));
    }
    for (const li of $('plist').children) li.classList.toggle('speaking', loud.has(li.dataset.identity));
  });
}

function renderPeople() {
  const room = state.room;
  const list = $('plist');
  list.textContent = '';
  if (!room || !room.info) { $('count').textContent = '0'; return; }
  const people = [{ identity: room.info.identity, me: true }, ...[...room.participants.values()].map((p) => ({ identity: p.identity }))];
  for (const p of people) {
    const li = document.createElement('li');
    li.textContent = p.identity;
    li.dataset.identity = p.identity;
    if (p.me) li.className = 'me';
    if (state.speaking.has(p.identity)) li.classList.add('speaking');
    list.append(li);
  }
  $('count').textContent = String(people.length);
}

function addTile(id, stream, name, muted) {
  let tile = state.tiles.get(id);
  if (tile) return tile;
  const el = document.createElement('div');
  el.className = 'tile';
  el.dataset.stream = id;
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.muted = muted;
  video.srcObject = stream;
  const label = document.createElement('div');
  label.className = 'name';
  label.textContent = name;
  const stats = document.createElement('div');
  stats.className = 'stats';
  el.append(video, label, stats);
  $('grid').append(el);
  tile = { el, video, name: label, stats, stream };
  state.tiles.set(id, tile);
  return tile;
}

// reportSize sends a layer message (docs/signal.md) with the size in
// device pixels at which the tile shows the stream's video, whenever it
// changes, at most every 500 ms.
function reportSize(tile, streamId) {
  if (tile.resize || typeof ResizeObserver === 'undefined') return;
  let timer = 0;
  let last = '';
  tile.resize = new ResizeObserver((entries) => {
    const box = entries[entries.length - 1].contentRect;
    clearTimeout(timer);
    timer = setTimeout(() => {
      const dpr = window.devicePixelRatio || 1;
      const width = Math.round(box.width * dpr), height = Math.round(box.height * dpr);
      const key = `${width}x${height}`;
      if ((!width && !height) || key === last || !state.room || state.room.state !== States.JOINED) return;
      last = key;
      state.layers.push(state.room.setLayer(streamId, { width, height }));
    }, 500);
  });
  tile.resize.observe(tile.video);
  tile.stopResize = () => { clearTimeout(timer); tile.resize.disconnect(); };
}

function removeTile(id) {
  const tile = state.tiles.get(id);
  if (!tile) return;
  if (tile.stopResize) tile.stopResize();
  tile.el.remove();
  state.tiles.delete(id);
}

// Devices: the pickers list cameras and microphones (with names once
// access was granted); a change while in the room swaps the sent track.
async function listDevices() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [sel, kind] of [[$('camera'), 'videoinput'], [$('mic'), 'audioinput']]) {
    const keep = sel.value;
    sel.textContent = '';
    sel.append(new Option('default', ''));
    let i = 0;
    for (const d of devices.filter((x) => x.kind === kind)) sel.append(new Option(d.label || `${kind === 'videoinput' ? 'camera' : 'microphone'} ${++i}`, d.deviceId));
    sel.value = keep;
  }
}

async function switchDevice() {
  const room = state.room;
  if (!room || room.state !== States.JOINED) return;
  const old = state.local;
  const s = await localMedia();
  if (!s) return;
  state.local = s;
  await room.publish(s);
  const tile = state.tiles.get('local');
  if (tile) { tile.video.srcObject = s; tile.stream = s; } else addTile('local', s, 'you', true);
  if (old) old.getTracks().forEach((t) => t.stop());
  updateDeviceButtons();
}

function updateDeviceButtons() {
  const a = state.local && state.local.getAudioTracks()[0];
  const v = state.local && state.local.getVideoTracks()[0];
  $('mute').disabled = !a;
  $('cam').disabled = !v;
  $('mute').textContent = a && !a.enabled ? 'Unmute' : 'Mute';
  $('mute').classList.toggle('on', !!a && !a.enabled);
  $('cam').textContent = v && !v.enabled ? 'Camera on' : 'Camera off';
  $('cam').classList.toggle('on', !!v && !v.enabled);
}

function toggle(kind) {
  const t = state.local && (kind === 'audio' ? state.local.getAudioTracks() : state.local.getVideoTracks())[0];
  if (!t) return;
  t.enabled = !t.enabled;
  updateDeviceButtons();
}

async function copyLink() {
  const u = new URL(location.pathname, location.href);
  const r = (state.room && state.room.info && state.room.info.room) || $('room').value.trim();
  if (r) u.searchParams.set('room', r);
  if (state.relay) u.searchParams.set('relay', '1');
  const link = u.href;
  try {
    await navigator.clipboard.writeText(link);
    say('info', `Link copied: ${link}`, 'link');
  } catch {
    say('info', `Copy this link: ${link}`, 'link');
  }
}

function startStats() {
  stopStats();
  state.timer = setInterval(() => updateStats(), 1000);
}

function stopStats() { clearInterval(state.timer); }

// updateStats refreshes the overlays (from the 1 s timer, with
// state.meter) or, for summary(), only computes (with its own meter).
async function updateStats(meter = state.meter) {
  const pc = state.room && state.room.activePc;
  if (!pc) return null;
  const report = await pc.getStats();
  const path = pathOf(report);
  const inbound = meter.inbound(report);
  const outbound = meter.outbound(report);
  const streamOf = new Map();
  for (const [id, tile] of state.tiles) for (const t of tile.stream.getTracks()) streamOf.set(t.id, id);
  for (const s of inbound) s.streamId = streamOf.get(s.trackId) || '';
  const last = {
    connectionState: pc.connectionState,
    mediaPath: state.room.path,
    iceConnectionState: pc.iceConnectionState,
    signalingState: pc.signalingState,
    path,
    inbound,
    outbound,
    tiles: state.tiles.size,
  };
  if (meter !== state.meter) return last;
  const pathText = path ? `${path.local}→${path.remote} ${path.protocol}  rtt ${path.rttMs ?? '?'} ms` : 'no path yet';
  for (const [id, tile] of state.tiles) {
    if (id === 'local') {
      const v = outbound.video || {}, a = outbound.audio || {};
      tile.stats.textContent = `${pathText}\nup video ${v.kbps || 0} kbit/s  audio ${a.kbps || 0} kbit/s`;
      continue;
    }
    const lines = [pathText];
    for (const s of inbound.filter((x) => x.streamId === id)) {
      lines.push(`${s.kind} ${s.kbps} kbit/s  loss ${s.lossPct}%` + (s.kind === 'video' ? `  ${s.fps} fps` : ''));
    }
    tile.stats.textContent = lines.join('\n');
  }
  return last;
}

// cleanup ends what a room left behind and makes the form usable again.
function cleanup() {
  stopStats();
  if (state.local) state.local.getTracks().forEach((t) => t.stop());
  state.local = null;
  for (const id of [...state.tiles.keys()]) removeTile(id);
  lock(false);
  updateDeviceButtons();
  renderPeople();
  updateStatus();
}

function leave() {
  if (state.room) state.room.leave();
  cleanup();
  status('left the room');
}

// window.traverse is for tests and the curious.
window.traverse = {
  get room() { return state.room; },
  get pc() { return state.room && state.room.pc; },
  get path() { return state.room ? state.room.path : ''; },
  get joined() { return state.room && state.room.state === States.JOINED ? state.room.info : null; },
  get errors() { return state.errors.slice(); },
  get messages() { return state.messages.slice(); },
  get layers() { return state.layers.slice(); },
  summary() { return updateStats(summaryMeter); },
  leave,
};

$('join').addEventListener('submit', (e) => {
  e.preventDefault();
  join($('room').value.trim(), $('identity').value.trim(), $('relay').checked);
});
$('leave').addEventListener('click', leave);
$('mute').addEventListener('click', () => toggle('audio'));
$('cam').addEventListener('click', () => toggle('video'));
$('copy').addEventListener('click', copyLink);
$('camera').addEventListener('change', switchDevice);
$('mic').addEventListener('change', switchDevice);
listDevices().catch(() => {});

// ?room=R[&identity=I][&relay=1][&token=T][&autojoin=1] pre-fills the form
// (and joins): links to share, and what the browser tests open.
if (params.get('room')) $('room').value = params.get('room');
if (params.get('identity')) $('identity').value = params.get('identity');
if (params.get('token')) { $('token').hidden = false; $('token').value = params.get('token'); }
if (params.get('relay') === '1') $('relay').checked = true;
if (params.get('autojoin') === '1' && $('room').value) {
  join($('room').value.trim(), $('identity').value.trim(), $('relay').checked);
}
