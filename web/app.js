// The demo room: join with a room name, share camera and microphone, see
// and hear everyone else in a grid with a per-connection overlay (path,
// bitrate, RTT, loss). One RTCPeerConnection to the SFU carries everything;
// the SFU renegotiates to add the others' tracks. On glare the SFU yields
// (it withdraws its offer and offers again later), so this page never
// rolls back: it drops an SFU offer that crosses its own. Each received
// video tells the SFU at what size it is shown (a layer message), so a
// simulcast publisher's larger layers go only where they are seen.
import { Signal } from './signal.js';
import { Meter, pathOf } from './stats.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const summaryMeter = new Meter();

const state = {
  sig: null,
  pc: null,
  local: null,
  me: null,              // the joined message
  relay: false,
  tiles: new Map(),      // stream id -> tile
  names: new Map(),      // stream id -> identity, from track events
  queue: Promise.resolve(),
  makingOffer: false,
  meter: new Meter(),
  last: null,            // the last stats summary
  errors: [],
  layers: [],            // the layer messages sent
  timer: 0,
};

function status(text) { $('status').textContent = text; }

// ?debug=1 logs the signaling exchange to the console.
const debug = params.get('debug') === '1' ? (...a) => console.log('[signal]', ...a) : () => {};

// serial runs signaling steps one at a time, in arrival order.
function serial(fn) {
  state.queue = state.queue.then(fn).catch((e) => {
    state.errors.push(String(e));
    console.error(e);
  });
  return state.queue;
}

async function getToken(room, identity) {
  const typed = $('token').value.trim();
  if (typed) return typed;
  const q = new URLSearchParams({ room });
  if (identity) q.set('identity', identity);
  const res = await fetch('token?' + q);
  if (res.status === 404) {
    $('token').hidden = false;
    throw new Error('this server mints no demo tokens: paste a token (traverse token)');
  }
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body.token;
}

async function join(room, identity, relay) {
  $('go').disabled = true;
  state.relay = relay;
  try {
    const token = await getToken(room, identity);
    status('camera and microphone…');
    state.local = await localMedia();
    if (state.local) addTile('local', state.local, 'you', true);
    const url = new URL('ws', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const sig = new Signal(url.href);
    state.sig = sig;
    sig.debug = debug;
    sig.on('joined', (m) => serial(() => onJoined(m)))
      .on('answer', (m) => serial(() => onAnswer(m)))
      .on('offer', (m) => serial(() => onOffer(m)))
      .on('candidate', (m) => serial(() => onCandidate(m)))
      .on('participant', onParticipant)
      .on('track', onTrack)
      .on('speakers', onSpeakers)
      .on('error', (m) => { state.errors.push(`${m.class}: ${m.message}`); status(`error (${m.class}): ${m.message}`); })
      .on('close', () => { status('disconnected'); stopStats(); });
    status('connecting…');
    await sig.open();
    sig.send({ type: 'join', token });
    $('leave').hidden = false;
  } catch (e) {
    status(String(e.message || e));
    state.errors.push(String(e));
    $('go').disabled = false;
  }
}

// localMedia returns camera and microphone, else the microphone alone,
// else null: a participant without devices still sees and hears the room.
async function localMedia() {
  for (const c of [{ audio: true, video: { width: 640, height: 480 } }, { audio: true }]) {
    try {
      return await navigator.mediaDevices.getUserMedia(c);
    } catch (e) {
      state.errors.push(`getUserMedia ${JSON.stringify(c)}: ${e}`);
    }
  }
  return null;
}

function onJoined(m) {
  state.me = m;
  status(`in room ${m.room} as ${m.identity} on node ${m.node}${m.region ? ' (' + m.region + ')' : ''}`);
  const pc = new RTCPeerConnection({
    iceServers: m.iceServers || [],
    iceTransportPolicy: state.relay ? 'relay' : 'all',
    bundlePolicy: 'max-bundle',
    rtcpMuxPolicy: 'require',
  });
  state.pc = pc;
  pc.onicecandidate = (e) => state.sig.send({ type: 'candidate', candidate: e.candidate ? e.candidate.toJSON() : { candidate: '' } });
  pc.onnegotiationneeded = () => serial(async () => {
    state.makingOffer = true;
    try {
      await pc.setLocalDescription();
      state.sig.send({ type: 'offer', sdp: pc.localDescription.sdp });
    } finally {
      state.makingOffer = false;
    }
  });
  pc.ontrack = (e) => {
    const stream = e.streams[0] || new MediaStream([e.track]);
    const tile = addTile(stream.id, stream, state.names.get(stream.id) || 'participant', false);
    if (!e.streams[0]) tile.video.srcObject.addTrack(e.track);
    if (e.track.kind === 'video') reportSize(tile, stream.id);
    stream.onremovetrack = () => { if (stream.getTracks().length === 0) removeTile(stream.id); };
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === 'failed') {
      // An ICE restart: negotiationneeded offers new ICE credentials, which
      // signal announces to the nodes.
      status('media connection failed: restarting ICE');
      pc.restartIce();
    }
  };
  if (m.publish !== false && state.local) {
    const simulcast = params.get('simulcast') === '1';
    for (const track of state.local.getTracks()) {
      const init = { direction: 'sendonly', streams: [state.local] };
      if (simulcast && track.kind === 'video') {
        init.sendEncodings = [
          { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
          { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
          { rid: 'f', maxBitrate: 1500000 },
        ];
      }
      pc.addTransceiver(track, init);
    }
  } else {
    // Subscribe only (no right to publish, or no devices): still start a
    // negotiation so the SFU has a session to add the others' tracks to.
    pc.addTransceiver('audio', { direction: 'recvonly' });
  }
  startStats();
}

async function onAnswer(m) {
  const pc = state.pc;
  if (!pc || pc.signalingState !== 'have-local-offer') return;
  await pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
}

async function onOffer(m) {
  const pc = state.pc;
  if (!pc) return;
  // Glare: our offer is out. The SFU is the polite side: when ours reaches
  // it, it rolls its own offer back, answers ours, and offers again after.
  // So an offer that crosses ours is dropped here.
  if (pc.signalingState === 'have-local-offer') { debug('dropping a node offer that crossed ours'); return; }
  await pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
  await pc.setLocalDescription();
  state.sig.send({ type: 'answer', sdp: pc.localDescription.sdp });
}

async function onCandidate(m) {
  if (!state.pc || !m.candidate) return;
  try {
    await state.pc.addIceCandidate(m.candidate.candidate ? m.candidate : null);
  } catch (e) {
    if (!state.makingOffer) throw e;
  }
}

function onParticipant(m) {
  const who = m.participant && m.participant.identity;
  if (who) status(`${who} ${m.event}`);
}

function onTrack(m) {
  if (!m.track || !m.participant) return;
  state.names.set(m.track.streamId, m.participant.identity);
  const tile = state.tiles.get(m.track.streamId);
  if (tile) tile.name.textContent = m.participant.identity;
}

function onSpeakers(m) {
  const loud = new Set((m.speakers || []).filter((s) => s.level > 0).map((s) => s.identity));
  for (const [id, tile] of state.tiles) {
    const name = id === 'local' ? state.me && state.me.identity : state.names.get(id);
    tile.el.classList.toggle('speaking', loud.has(name));
  }
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
// changes, at most every 500 ms. track "*" with the stream id: the
// stream's video whatever id the browser gave the remote track.
function reportSize(tile, streamId) {
  if (tile.resize || typeof ResizeObserver === 'undefined') return;
  let timer = 0;
  let last = '';
  tile.resize = new ResizeObserver((entries) => {
    const box = entries[entries.length - 1].contentRect;
    clearTimeout(timer);
    timer = setTimeout(() => {
      const dpr = window.devicePixelRatio || 1;
      const width = Math.min(16384, Math.round(box.width * dpr));
      const height = Math.min(16384, Math.round(box.height * dpr));
      const key = `${width}x${height}`;
      if ((!width && !height) || key === last || !state.sig) return;
      last = key;
      const m = { type: 'layer', track: '*', streamId, width, height };
      state.layers.push(m);
      state.sig.send(m);
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

function startStats() {
  stopStats();
  state.timer = setInterval(() => updateStats(), 1000);
}

function stopStats() {
  clearInterval(state.timer);
}

// updateStats refreshes the overlays (from the 1 s timer, with
// state.meter) or, for summary(), only computes (with its own meter, so
// that the overlays' rates are not disturbed).
async function updateStats(meter = state.meter) {
  const pc = state.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  const path = pathOf(report);
  const inbound = meter.inbound(report);
  const outbound = meter.outbound(report);
  // Map inbound streams to tiles through the receivers' tracks.
  const streamOf = new Map();
  for (const [id, tile] of state.tiles) {
    for (const t of tile.stream.getTracks()) streamOf.set(t.id, id);
  }
  for (const s of inbound) s.streamId = streamOf.get(s.trackId) || '';
  const last = {
    connectionState: pc.connectionState,
    iceConnectionState: pc.iceConnectionState,
    signalingState: pc.signalingState,
    path,
    inbound,
    outbound,
    tiles: state.tiles.size,
  };
  if (meter !== state.meter) return last;
  state.last = last;
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

// window.traverse is for tests and the curious: the peer connection and a
// fresh statistics summary.
window.traverse = {
  get pc() { return state.pc; },
  get joined() { return state.me; },
  get errors() { return state.errors.slice(); },
  get layers() { return state.layers.slice(); },
  summary() { return updateStats(summaryMeter); },
  leave,
};

function leave() {
  if (state.sig) state.sig.send({ type: 'leave' });
  if (state.pc) state.pc.close();
  if (state.local) state.local.getTracks().forEach((t) => t.stop());
  stopStats();
  for (const id of [...state.tiles.keys()]) removeTile(id);
  state.pc = null;
  $('leave').hidden = true;
  $('go').disabled = false;
  status('left');
}

$('join').addEventListener('submit', (e) => {
  e.preventDefault();
  join($('room').value.trim(), $('identity').value.trim(), $('relay').checked);
});
$('leave').addEventListener('click', leave);

// ?room=R[&identity=I][&relay=1][&token=T][&autojoin=1] pre-fills the form
// (and joins): links to share, and what the browser tests open.
if (params.get('room')) $('room').value = params.get('room');
if (params.get('identity')) $('identity').value = params.get('identity');
if (params.get('token')) { $('token').hidden = false; $('token').value = params.get('token'); }
if (params.get('relay') === '1') $('relay').checked = true;
if (params.get('autojoin') === '1' && $('room').value) {
  join($('room').value.trim(), $('identity').value.trim(), $('relay').checked);
}
