// traverse.js: the browser client of traverse (docs/client-js.md). One
// ES module, no dependencies, no build step:
//
//   import { Room } from '/traverse.js';
//   const room = new Room();                       // signaling at this page's /ws
//   room.on('track', ({ stream, participant }) => show(stream, participant));
//   await room.join(token, { media: await navigator.mediaDevices.getUserMedia({ audio: true, video: true }) });
//
// It speaks the signaling protocol of docs/signal.md over one WebSocket
// and holds one RTCPeerConnection to the SFU node, which renegotiates to
// add the others' tracks. On glare the node yields (it withdraws its offer
// and offers again later), so the client never rolls back: it drops a
// node offer that crosses its own.
//
// Reconnect: when the WebSocket drops (a network change, a signal server
// restart) or stops answering pings, the room reconnects with exponential
// backoff and joins again with the same token, then publishes the same
// media again and receives the others' tracks on a new peer connection.
// When the server sends {"type":"rejoin"} (its node failed or drains), the
// room does the same on the same WebSocket.

// Errors the server or the browser reports carry a class (docs/signal.md):
// bad-request, unauthorized, forbidden, rate-limited, unavailable,
// internal; and for errors found by the client: media (camera or
// microphone), network (the WebSocket), input (a bad argument).
export class RoomError extends Error {
  constructor(cls, message, fatal = false) {
    super(message);
    this.name = 'RoomError';
    this.class = cls;
    this.fatal = fatal;
  }
}

// Room names and identities the bus accepts (docs/signal.md, Tokens: the
// bus's names are at most 64 characters).
export const ROOM_NAME = /^[A-Za-z0-9_-]{1,64}$/;
export const IDENTITY = /^[A-Za-z0-9_.@:-]{1,64}$/;

// States, in the order a room goes through them.
export const States = Object.freeze({
  IDLE: 'idle', // not joined yet
  CONNECTING: 'connecting', // opening the WebSocket, waiting for joined
  JOINED: 'joined', // in the room
  RECONNECTING: 'reconnecting', // the WebSocket dropped: waiting to try again
  REJOINING: 'rejoining', // the server asked to join again (node failover)
  LEFT: 'left', // left on purpose
  FAILED: 'failed', // gave up: see the last error
});

const defaults = {
  url: '', // WebSocket URL; default: ws(s)://this host/ws, relative to the page
  iceTransportPolicy: 'all', // 'relay': only TURN
  simulcast: false, // send three video layers (q, h, f)
  reconnect: true, // reconnect after a drop, rejoin on the server's request
  maxAttempts: 10, // reconnect attempts before giving up
  minDelay: 500, // first backoff (ms), doubled each attempt, with jitter
  maxDelay: 10000, // backoff ceiling (ms)
  pingInterval: 10000, // an application ping this often (ms)...
  pingTimeout: 5000, // ...answered within this long, or the socket counts as dropped
  debug: null, // function(...args) that logs the signaling exchange
};

export class Room {
  constructor(options = {}) {
    this.options = { ...defaults, ...options };
    this.state = States.IDLE;
    this.info = null; // the last joined message: room, identity, participantId, node, region, publish, subscribe
    this.participants = new Map(); // participant id -> {id, identity, tracks: Map(track id -> track)}
    this.pc = null;
    this.media = null; // the published MediaStream
    this.ws = null;
    this.handlers = new Map();
    this.token = '';
    this.gen = 0; // peer connection generation: handlers of a closed one do nothing
    this.queue = Promise.resolve();
    this.makingOffer = false;
    this.attempt = 0;
    this.timers = new Set();
    this.lastError = null;
    this.names = new Map(); // stream id -> identity
    this.onOnline = () => { if (this.state === States.RECONNECTING) this.retryNow(); };
  }

  // on calls fn(detail) for each event of type; it returns a function that
  // removes the handler. Events: state, joined, participantJoined,
  // participantLeft, trackPublished, trackUnpublished, track, trackEnded,
  // speakers, error, warning, reconnecting, reconnected, rejoin,
  // connectionState, left.
  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type).delete(fn);
  }

  emit(type, detail) {
    for (const fn of this.handlers.get(type) || []) {
      try { fn(detail); } catch (e) { console.error(`traverse: ${type} handler:`, e); }
    }
  }

  setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this.emit('state', { state, previous });
  }

  debug(...a) { if (this.options.debug) this.options.debug(...a); }

  url() {
    if (this.options.url) return this.options.url;
    const u = new URL('ws', location.href);
    u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return u.href;
  }

  // join enters the room of token. media (a MediaStream, or null to only
  // watch and listen) is published when the token allows it. It resolves
  // with the joined message and rejects with a RoomError (its class says
  // why: unauthorized for a bad or expired token, unavailable when no SFU
  // node is up, network when the server cannot be reached).
  join(token, { media = null } = {}) {
    if (this.state !== States.IDLE && this.state !== States.LEFT && this.state !== States.FAILED) {
      return Promise.reject(new RoomError('input', `cannot join while ${this.state}`));
    }
    if (!token) return Promise.reject(new RoomError('input', 'a token is required'));
    this.token = token;
    this.media = media;
    this.info = null; // a first join that fails is not retried: it says why
    this.attempt = 0;
    this.lastError = null;
    this.participants.clear();
    window.addEventListener('online', this.onOnline);
    this.setState(States.CONNECTING);
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.connect();
    });
  }

  // connect opens a WebSocket and sends join; the socket's close decides
  // what comes next (see onSocketClose).
  connect() {
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (e) {
      this.fail(new RoomError('network', `signaling URL: ${e.message}`, true));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.send({ type: 'join', token: this.token });
      this.startPing(ws);
    };
    ws.onmessage = (e) => {
      if (ws !== this.ws) return;
      let m;
      try { m = JSON.parse(e.data); } catch { return; }
      this.debug('<-', m.type, m.type === 'offer' || m.type === 'answer' ? describe(m.sdp) : '');
      this.onMessage(m);
    };
    ws.onclose = (e) => { if (ws === this.ws) this.onSocketClose(e); };
  }

  send(m) {
    this.debug('->', m.type, m.type === 'offer' || m.type === 'answer' ? describe(m.sdp) : '');
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(m));
  }

  // startPing sends a ping every pingInterval; a pong must come within
  // pingTimeout, else the socket is treated as dropped (a network change
  // can leave a TCP connection silently dead for minutes).
  startPing(ws) {
    const { pingInterval, pingTimeout } = this.options;
    if (!pingInterval) return;
    const tick = this.every(pingInterval, () => {
      if (ws !== this.ws || ws.readyState !== WebSocket.OPEN) { this.clear(tick); return; }
      this.awaitingPong = this.after(pingTimeout, () => {
        if (ws !== this.ws) return;
        this.warn('network', 'the signaling server stopped answering: reconnecting');
        ws.close();
        this.onSocketClose({ code: 4000, reason: 'ping timeout' });
      });
      this.send({ type: 'ping' });
    });
  }

  onMessage(m) {
    switch (m.type) {
      case 'joined': this.serial(() => this.onJoined(m)); break;
      case 'answer': this.serial(() => this.onAnswer(m)); break;
      case 'offer': this.serial(() => this.onOffer(m)); break;
      case 'candidate': this.serial(() => this.onCandidate(m)); break;
      case 'participant': this.onParticipant(m); break;
      case 'track': this.onTrackMessage(m); break;
      case 'speakers': this.emit('speakers', m.speakers || []); break;
      case 'pong': this.clear(this.awaitingPong); break;
      case 'rejoin': this.onRejoin(m); break;
      case 'mute': this.onMute(m); break;
      case 'error': {
        const err = new RoomError(m.class || 'internal', m.message || 'error', !!m.fatal);
        if (err.fatal) this.lastError = err;
        this.emit('error', err);
        break;
      }
      default: break;
    }
  }

  // onRejoin: the node of this session failed or drains. Drop the peer
  // connection, join again on the same socket with the same token;
  // onJoined then publishes again and receives on a new connection.
  onRejoin(m) {
    if (!this.options.reconnect || this.state !== States.JOINED) return;
    this.emit('rejoin', { reason: m.reason || '' });
    this.setState(States.REJOINING);
    this.closePeer();
    this.resetParticipants();
    this.send({ type: 'join', token: this.token });
  }

  // onMute: the operator muted (or unmuted) a published track (docs/api.md):
  // track ({id} or an id) is a track id of the published media, or '*' for
  // all of them.
  // The track's enabled is set accordingly (no renegotiation) and a mute
  // event tells the page.
  onMute(m) {
    const id = m.track && typeof m.track === 'object' ? m.track.id : m.track;
    const tracks = (this.media ? this.media.getTracks() : []).filter((t) => id === '*' || t.id === id);
    for (const t of tracks) t.enabled = !m.muted;
    this.emit('mute', { track: id, muted: !!m.muted, message: m.message || '', tracks });
  }

  onSocketClose(e) {
    this.ws = null;
    this.clear(this.awaitingPong);
    if (this.state === States.LEFT || this.state === States.FAILED) return;
    const err = this.lastError;
    this.lastError = null;
    const never = !this.info; // never got into the room
    const final = err && ['unauthorized', 'forbidden', 'bad-request', 'internal', 'removed'].includes(err.class);
    if (never || final || !this.options.reconnect) {
      this.fail(err || new RoomError('network', `the signaling connection closed (${e.code}${e.reason ? ' ' + e.reason : ''})`, true));
      return;
    }
    this.scheduleReconnect(err);
  }

  scheduleReconnect(err) {
    const { maxAttempts, minDelay, maxDelay } = this.options;
    if (this.attempt >= maxAttempts) {
      this.fail(err || new RoomError('network', `could not reconnect after ${maxAttempts} attempts`, true));
      return;
    }
    this.closePeer();
    this.resetParticipants();
    const delay = Math.min(maxDelay, minDelay * 2 ** this.attempt) * (0.75 + Math.random() * 0.5);
    this.attempt++;
    this.setState(States.RECONNECTING);
    this.emit('reconnecting', { attempt: this.attempt, delay: Math.round(delay), error: err || null });
    this.reconnectTimer = this.after(delay, () => this.retryNow());
  }

  retryNow() {
    this.clear(this.reconnectTimer);
    if (this.state !== States.RECONNECTING) return;
    this.setState(States.CONNECTING);
    this.connect();
  }

  fail(err) {
    this.closeAll();
    this.setState(States.FAILED);
    this.emit('error', err);
    if (this.pending) { this.pending.reject(err); this.pending = null; }
  }

  // leave tells the server and closes everything; the published media's
  // tracks are not stopped (they are the caller's).
  leave() {
    if (this.state === States.LEFT) return;
    this.send({ type: 'leave' });
    this.closeAll();
    this.setState(States.LEFT);
    this.emit('left', {});
    if (this.pending) { this.pending.reject(new RoomError('input', 'left before joining')); this.pending = null; }
  }

  closeAll() {
    window.removeEventListener('online', this.onOnline);
    for (const t of this.timers) { clearTimeout(t); clearInterval(t); }
    this.timers.clear();
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
    this.closePeer();
    this.resetParticipants();
  }

  closePeer() {
    this.gen++;
    const pc = this.pc;
    this.pc = null;
    this.queue = Promise.resolve();
    if (pc) {
      const tracks = pc.getReceivers().map((r) => r.track).filter(Boolean);
      pc.close();
      for (const track of tracks) this.emit('trackEnded', { track });
    }
  }

  resetParticipants() {
    for (const p of this.participants.values()) this.emit('participantLeft', { participant: p });
    this.participants.clear();
  }

  // serial runs signaling steps one at a time, in arrival order, for the
  // current peer connection.
  serial(fn) {
    const gen = this.gen;
    this.queue = this.queue.then(() => (gen === this.gen ? fn() : null)).catch((e) => {
      this.emit('warning', new RoomError('internal', String(e.message || e)));
    });
    return this.queue;
  }

  onJoined(m) {
    const again = !!this.info;
    this.info = m;
    this.attempt = 0;
    this.closePeer();
    this.newPeer(m);
    this.setState(States.JOINED);
    this.emit('joined', m);
    if (this.pending) { this.pending.resolve(m); this.pending = null; }
    if (again) this.emit('reconnected', m);
  }

  newPeer(m) {
    const gen = this.gen;
    const pc = new RTCPeerConnection({
      iceServers: m.iceServers || [],
      iceTransportPolicy: this.options.iceTransportPolicy,
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
    });
    this.pc = pc;
    pc.onicecandidate = (e) => {
      if (gen === this.gen) this.send({ type: 'candidate', candidate: e.candidate ? e.candidate.toJSON() : { candidate: '' } });
    };
    pc.onnegotiationneeded = () => this.serial(async () => {
      this.makingOffer = true;
      try {
        await pc.setLocalDescription();
        this.send({ type: 'offer', sdp: pc.localDescription.sdp });
      } finally {
        this.makingOffer = false;
      }
    });
    pc.ontrack = (e) => {
      if (gen !== this.gen) return;
      const stream = e.streams[0] || new MediaStream([e.track]);
      stream.onremovetrack = (ev) => this.emit('trackEnded', { track: ev.track, stream });
      this.emit('track', { track: e.track, stream, transceiver: e.transceiver, identity: this.names.get(stream.id) || '' });
    };
    pc.onconnectionstatechange = () => {
      if (gen !== this.gen) return;
      this.emit('connectionState', { state: pc.connectionState });
      // An ICE restart: negotiationneeded offers new ICE credentials,
      // which signal announces to the nodes.
      if (pc.connectionState === 'failed') {
        this.warn('network', 'the media connection failed: restarting ICE');
        pc.restartIce();
      }
    };
    this.addMedia(pc);
  }

  addMedia(pc) {
    const stream = this.media;
    if (this.info && this.info.publish !== false && stream && stream.getTracks().length) {
      for (const track of stream.getTracks()) {
        const init = { direction: 'sendonly', streams: [stream] };
        if (this.options.simulcast && track.kind === 'video') {
          init.sendEncodings = [
            { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
            { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
            { rid: 'f', maxBitrate: 1500000 },
          ];
        }
        pc.addTransceiver(track, init);
      }
    } else {
      // Subscribe only (no right to publish, or no media): still start a
      // negotiation so the node has a session to add the others' tracks to.
      pc.addTransceiver('audio', { direction: 'recvonly' });
    }
  }

  // publish sends stream's tracks (replacing what was sent; null: stop
  // sending). Same kinds as before are swapped in place (replaceTrack: no
  // renegotiation, e.g. another camera); otherwise the peer connection
  // renegotiates.
  async publish(stream) {
    this.media = stream;
    const pc = this.pc;
    if (!pc || this.state !== States.JOINED) return;
    if (this.info.publish === false) throw new RoomError('forbidden', 'this token may not publish');
    const senders = pc.getSenders();
    const tracks = stream ? stream.getTracks() : [];
    const used = new Set();
    for (const track of tracks) {
      const s = pc.getSenders().find((x) => !used.has(x) && x.track && x.track.kind === track.kind);
      if (s) {
        used.add(s);
        await s.replaceTrack(track);
        if (s.setStreams) s.setStreams(stream);
      } else {
        pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      }
    }
    for (const s of senders) {
      if (!used.has(s) && s.track) await s.replaceTrack(null);
    }
  }

  // unpublish stops sending (the tracks are not stopped).
  unpublish() { return this.publish(null); }

  // setLayer caps what is received of a remote video: streamId is the
  // stream's id (the track event's stream.id), and either maxLayer (0 low,
  // 1, 2 high) or the size it is shown at, in device pixels
  // ({width, height}); the node picks the layer. track narrows to one
  // track id ('*': every track of the stream). It returns the message sent.
  setLayer(streamId, want, track = '*') {
    const m = { type: 'layer', track, streamId };
    if (want && want.maxLayer !== undefined) m.maxLayer = want.maxLayer;
    else {
      m.width = Math.max(0, Math.min(16384, Math.round(want.width || 0)));
      m.height = Math.max(0, Math.min(16384, Math.round(want.height || 0)));
    }
    this.send(m);
    return m;
  }

  onAnswer(m) {
    const pc = this.pc;
    if (!pc || pc.signalingState !== 'have-local-offer') return null;
    return pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
  }

  async onOffer(m) {
    const pc = this.pc;
    if (!pc) return;
    // Glare: our offer is out. The node is the polite side: when ours
    // reaches it, it rolls its own offer back, answers ours, and offers
    // again after. So an offer that crosses ours is dropped here.
    if (pc.signalingState === 'have-local-offer') { this.debug('dropping a node offer that crossed ours'); return; }
    await pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
    await pc.setLocalDescription();
    this.send({ type: 'answer', sdp: pc.localDescription.sdp });
  }

  async onCandidate(m) {
    if (!this.pc || !m.candidate) return;
    try {
      await this.pc.addIceCandidate(m.candidate.candidate ? m.candidate : null);
    } catch (e) {
      if (!this.makingOffer) throw e;
    }
  }

  onParticipant(m) {
    const p = m.participant;
    if (!p || !p.id) return;
    if (m.event === 'joined') {
      if (this.participants.has(p.id)) return;
      const entry = { id: p.id, identity: p.identity || '', tracks: new Map() };
      this.participants.set(p.id, entry);
      this.emit('participantJoined', { participant: entry });
    } else if (m.event === 'left') {
      const entry = this.participants.get(p.id);
      if (!entry) return;
      this.participants.delete(p.id);
      this.emit('participantLeft', { participant: entry });
    }
  }

  onTrackMessage(m) {
    const p = m.participant, t = m.track;
    if (!p || !t) return;
    let entry = this.participants.get(p.id);
    if (!entry && m.event === 'published') {
      entry = { id: p.id, identity: p.identity || '', tracks: new Map() };
      this.participants.set(p.id, entry);
      this.emit('participantJoined', { participant: entry });
    }
    if (m.event === 'published') {
      if (t.streamId) this.names.set(t.streamId, p.identity || '');
      if (entry) entry.tracks.set(t.id, t);
      this.emit('trackPublished', { participant: entry, track: t });
    } else if (m.event === 'unpublished') {
      if (entry) entry.tracks.delete(t.id);
      this.emit('trackUnpublished', { participant: entry || p, track: t });
    }
  }

  // identityOf returns who publishes the stream (from track messages).
  identityOf(streamId) { return this.names.get(streamId) || ''; }

  warn(cls, message) { this.emit('warning', new RoomError(cls, message)); }

  after(ms, fn) {
    const t = setTimeout(() => { this.timers.delete(t); fn(); }, ms);
    this.timers.add(t);
    return t;
  }

  every(ms, fn) {
    const t = setInterval(fn, ms);
    this.timers.add(t);
    return t;
  }

  clear(t) {
    if (t === undefined) return;
    clearTimeout(t);
    clearInterval(t);
    this.timers.delete(t);
  }
}

// fetchDemoToken asks a server started with --demo-tokens (traverse serve)
// for a publish+subscribe token. It rejects with a RoomError of class
// 'unavailable' when the server mints none (404).
export async function fetchDemoToken(room, identity = '', base = location.href) {
  if (!ROOM_NAME.test(room)) throw new RoomError('input', `room name must be 1-64 of A-Z a-z 0-9 _ - (got ${room.length} characters)`);
  const q = new URLSearchParams({ room });
  if (identity) q.set('identity', identity);
  const res = await fetch(new URL('token?' + q, base));
  if (res.status === 404) throw new RoomError('unavailable', 'this server mints no demo tokens: paste a token made with traverse token');
  let body = {};
  try { body = await res.json(); } catch { /* not JSON */ }
  if (!res.ok) throw new RoomError(res.status === 403 ? 'forbidden' : 'bad-request', body.error || res.statusText);
  return body.token;
}

// describe summarizes an SDP for the debug log: each m= line's kind,
// direction and mid.
function describe(sdp) {
  return (sdp || '').split('\r\n').filter((l) => /^(m=|a=(sendrecv|sendonly|recvonly|inactive|mid:|simulcast))/.test(l))
    .map((l) => l.replace(/^m=(\w+).*/, '$1').replace(/^a=/, '')).join(' ');
}
