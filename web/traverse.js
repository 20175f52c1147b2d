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
// Peer to peer: when the server runs peer-to-peer rooms (signal --p2p,
// joined says mode "p2p"), a room of two sends media browser to browser on
// a second RTCPeerConnection (ICE with the server's STUN, then TURN), the
// offer and answer relayed by signal (p2p-offer, p2p-answer,
// p2p-candidate). When a third joins (mode "sfu") the room publishes to
// the SFU node as usual and keeps the direct connection until both ends
// decode each other through the SFU; when the room is down to two (mode
// "p2p") it connects directly again and leaves the SFU (sfu-release) once
// both decode each other directly. The two ends agree over a data channel
// of the direct connection. The 'path' event says where media goes:
// 'p2p-direct', 'p2p-relay' (through TURN), 'sfu', or 'waiting' (alone).
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
  moveTimeout: 8000, // peer-to-peer rooms: a move between P2P and the SFU closes the old path after this long (ms) at the latest
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
    this.trackStreams = new Map(); // received track id -> stream id (SFU connection)
    this.p2p = null; // the direct connection: {pc, peer, stream, dc, gen, queue, ...}
    this.p2pRooms = false; // the server runs peer-to-peer rooms (joined said mode p2p)
    this.path = ''; // where media goes now: p2p-direct, p2p-relay, sfu, waiting
    this.onOnline = () => { if (this.state === States.RECONNECTING) this.retryNow(); };
  }

  // on calls fn(detail) for each event of type; it returns a function that
  // removes the handler. Events: state, joined, participantJoined,
  // participantLeft, trackPublished, trackUnpublished, track, trackEnded,
  // speakers, error, warning, reconnecting, reconnected, rejoin,
  // connectionState, path ({path, previous, local, remote}), left.
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
      case 'mode': this.serial(() => this.onMode(m)); break;
      case 'p2p-offer': case 'p2p-answer': case 'p2p-candidate': this.onP2PSignal(m); break;
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
    this.closeP2P();
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
    this.closeP2P();
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
    this.closeP2P();
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
    this.closeP2P();
    // In a peer-to-peer room the mode message that follows says whether
    // to connect to the peer or to the SFU node.
    this.p2pRooms = m.mode === 'p2p';
    if (!this.p2pRooms) { this.newPeer(m); this.setPath('sfu'); }
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
      this.trackStreams.set(e.track.id, stream.id);
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

  // setPath records where media goes now and tells the page.
  setPath(path, detail = {}) {
    if (path === this.path) return;
    const previous = this.path;
    this.path = path;
    this.emit('path', { path, previous, ...detail });
  }

  // activePc is the peer connection carrying media now: the direct one in
  // a room of two, the SFU's otherwise.
  get activePc() {
    if (this.p2p && (this.path.startsWith('p2p') || !this.pc)) return this.p2p.pc;
    return this.pc;
  }

  // onMode: the server says the room's mode (peer-to-peer rooms only).
  onMode(m) {
    if (this.state !== States.JOINED) return;
    this.mode = m.mode;
    if (m.mode === 'sfu') {
      if (!this.pc) this.newPeer(this.info);
      if (this.p2p) this.moveOff(this.p2p, 'sfu');
      else this.setPath('sfu');
      return;
    }
    const peer = m.peer || null;
    if (this.p2p && (!peer || this.p2p.peer.id !== peer.id)) this.closeP2P();
    if (peer && !this.p2p) this.newP2P(peer, !!m.initiator);
    if (peer) {
      this.addPeerEntry(peer);
      if (this.pc) this.moveOff(this.p2p, 'p2p');
    } else {
      // Alone: nobody to send to or receive from.
      if (this.pc) { this.closePeer(); this.send({ type: 'sfu-release' }); }
      this.resetParticipants();
      this.setPath('waiting');
    }
  }

  addPeerEntry(peer) {
    if (this.participants.has(peer.id)) return;
    const entry = { id: peer.id, identity: peer.identity || '', tracks: new Map() };
    this.participants.set(peer.id, entry);
    this.emit('participantJoined', { participant: entry });
  }

  // newP2P opens the direct connection to peer; the initiator offers.
  newP2P(peer, initiator) {
    const pc = new RTCPeerConnection({
      iceServers: (this.info && this.info.iceServers) || [],
      iceTransportPolicy: this.options.iceTransportPolicy,
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
    });
    const p = { pc, peer, initiator, stream: new MediaStream(), queue: Promise.resolve(), flags: {}, timer: 0 };
    this.p2p = p;
    this.names.set(p.stream.id, peer.identity || '');
    // A negotiated channel (same id on both ends, no in-band open): the
    // two ends say on it which path they decode each other on.
    p.dc = pc.createDataChannel('traverse', { negotiated: true, id: 0 });
    p.dc.onmessage = (e) => { p.flags['peer-' + e.data] = true; this.checkMove(p); };
    pc.onicecandidate = (e) => {
      if (this.p2p === p) this.send({ type: 'p2p-candidate', candidate: e.candidate ? e.candidate.toJSON() : { candidate: '' } });
    };
    pc.ontrack = (e) => {
      if (this.p2p !== p) return;
      p.stream.addTrack(e.track);
      this.emit('track', { track: e.track, stream: p.stream, transceiver: e.transceiver, identity: peer.identity || '', p2p: true });
    };
    pc.onconnectionstatechange = () => {
      if (this.p2p !== p) return;
      if (pc.connectionState === 'connected') this.p2pPath(p);
      if (pc.connectionState === 'failed') {
        this.warn('network', 'the direct connection failed: restarting ICE');
        if (p.initiator) pc.restartIce();
      }
    };
    if (initiator) {
      const stream = this.info.publish !== false ? this.media : null;
      for (const kind of ['audio', 'video']) {
        const track = stream ? stream.getTracks().find((t) => t.kind === kind) : null;
        if (track) pc.addTransceiver(track, { direction: 'sendrecv', streams: [stream] });
        else pc.addTransceiver(kind, { direction: 'recvonly' });
      }
      pc.onnegotiationneeded = () => this.p2pSerial(p, async () => {
        await pc.setLocalDescription();
        this.send({ type: 'p2p-offer', sdp: pc.localDescription.sdp });
      });
    }
    this.watchDecode(p, 'p2p');
  }

  // p2pPath finds the direct connection's selected candidate pair: through
  // TURN (p2p-relay) or not (p2p-direct).
  async p2pPath(p) {
    for (let i = 0; i < 50 && this.p2p === p; i++) {
      const report = await p.pc.getStats();
      let pair = null;
      report.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId); });
      if (pair) {
        const local = report.get(pair.localCandidateId) || {}, remote = report.get(pair.remoteCandidateId) || {};
        p.kind = local.candidateType === 'relay' || remote.candidateType === 'relay' ? 'p2p-relay' : 'p2p-direct';
        p.detail = { local: local.candidateType, remote: remote.candidateType };
        if (!this.pc) this.setPath(p.kind, p.detail);
        return;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  p2pSerial(p, fn) {
    p.queue = p.queue.then(() => (this.p2p === p ? fn() : null)).catch((e) => {
      this.emit('warning', new RoomError('internal', `direct connection: ${e.message || e}`));
    });
    return p.queue;
  }

  // onP2PSignal: the peer's offer, answer or candidate, relayed by signal.
  onP2PSignal(m) {
    const p = this.p2p;
    if (!p || m.from !== p.peer.id) return;
    const pc = p.pc;
    this.p2pSerial(p, async () => {
      if (m.type === 'p2p-offer') {
        await pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
        const stream = this.info.publish !== false ? this.media : null;
        for (const t of pc.getTransceivers()) {
          const kind = t.receiver.track.kind;
          const track = stream ? stream.getTracks().find((x) => x.kind === kind) : null;
          if (track && !t.sender.track) {
            await t.sender.replaceTrack(track);
            if (t.sender.setStreams) t.sender.setStreams(stream);
            t.direction = 'sendrecv';
          } else if (!track && !t.sender.track) {
            t.direction = 'recvonly';
          }
        }
        await pc.setLocalDescription();
        this.send({ type: 'p2p-answer', sdp: pc.localDescription.sdp });
      } else if (m.type === 'p2p-answer') {
        if (pc.signalingState === 'have-local-offer') await pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
      } else if (m.candidate) {
        await pc.addIceCandidate(m.candidate.candidate ? m.candidate : null);
      }
    });
  }

  // watchDecode sets flag on p once this end decodes the peer on path
  // ('p2p': the direct connection; 'sfu': the SFU's), and tells the peer.
  async watchDecode(p, path) {
    const key = 'local-' + path;
    for (;;) {
      if (this.p2p !== p || p.flags[key] || this.state !== States.JOINED) return;
      const pc = path === 'p2p' ? p.pc : this.pc;
      if (pc && await decodes(pc, path === 'p2p' ? null : (id) => this.names.get(this.trackStreams.get(id)) === p.peer.identity)) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    p.flags[key] = true;
    if (p.dc.readyState === 'open') p.dc.send(path);
    this.checkMove(p);
  }

  // moveOff starts the move of p's room to path ('sfu' or 'p2p'): the old
  // path closes once both ends decode each other on the new one, or after
  // moveTimeout whatever happens.
  moveOff(p, path) {
    p.target = path;
    p.flags.done = false;
    clearTimeout(p.timer);
    p.timer = setTimeout(() => { if (this.p2p === p && p.target === path) this.finishMove(p, path); }, this.options.moveTimeout);
    this.watchDecode(p, path);
  }

  checkMove(p) {
    const path = p.target;
    if (!path || this.p2p !== p || p.flags.done) return;
    if ((p.flags['local-' + path] || !receives(p)) && (p.flags['peer-' + path] || !sends(p))) this.finishMove(p, path);
  }

  finishMove(p, path) {
    clearTimeout(p.timer);
    p.flags.done = true;
    p.target = '';
    if (path === 'sfu') {
      this.closeP2P();
      this.setPath('sfu');
    } else {
      this.closePeer();
      this.send({ type: 'sfu-release' });
      if (p.kind) this.setPath(p.kind, p.detail);
    }
  }

  closeP2P() {
    const p = this.p2p;
    if (!p) return;
    this.p2p = null;
    clearTimeout(p.timer);
    const tracks = p.stream.getTracks();
    p.pc.close();
    for (const track of tracks) {
      p.stream.removeTrack(track);
      this.emit('trackEnded', { track, stream: p.stream });
    }
  }

  // publish sends stream's tracks (replacing what was sent; null: stop
  // sending). Same kinds as before are swapped in place (replaceTrack: no
  // renegotiation, e.g. another camera); otherwise the peer connection
  // renegotiates.
  async publish(stream) {
    this.media = stream;
    if (this.state !== States.JOINED) return;
    if (this.info.publish === false) throw new RoomError('forbidden', 'this token may not publish');
    if (this.p2p) {
      for (const t of this.p2p.pc.getTransceivers()) {
        const kind = t.receiver.track && t.receiver.track.kind;
        const track = stream ? stream.getTracks().find((x) => x.kind === kind) : null;
        if (t.sender && t.currentDirection !== 'stopped') await t.sender.replaceTrack(track || null);
      }
    }
    const pc = this.pc;
    if (!pc) return;
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
    // A direct stream is sent at one size: nothing to ask the SFU.
    if (this.p2p && this.p2p.stream.id === streamId) return null;
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
      // The direct peer leaving the SFU (sfu-release) is still here.
      if (this.p2p && this.mode === 'p2p' && this.p2p.peer.id === p.id) return;
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

// decodes reports whether pc receives the peer: settleFrames decoded video
// frames (or, without video, an audio packet) on a received track that
// passes want (null: any). Waiting for a few frames rather than the first
// lets the new path's video element start presenting before the old path
// closes (ten: a third of a second at 30 fps).
const settleFrames = 10;

async function decodes(pc, want) {
  const report = await pc.getStats();
  let video = false, audio = false;
  report.forEach((s) => {
    if (s.type !== 'inbound-rtp' || (want && !want(s.trackIdentifier))) return;
    if (s.kind === 'video' && s.framesDecoded >= settleFrames) video = true;
    if (s.kind === 'audio' && s.packetsReceived > 0) audio = true;
  });
  const hasVideo = pc.getReceivers().some((r) => r.track && r.track.kind === 'video' && r.track.readyState === 'live' && (!want || want(r.track.id)));
  return video || (audio && !hasVideo);
}

// sends and receives say whether the direct connection carries media
// from this end, and from the peer (a viewer sends none: nothing of it is
// waited for).
function sends(p) {
  return p.pc.getTransceivers().some((t) => t.currentDirection === 'sendrecv' || t.currentDirection === 'sendonly');
}

function receives(p) {
  return p.pc.getTransceivers().some((t) => t.currentDirection === 'sendrecv' || t.currentDirection === 'recvonly');
}

// describe summarizes an SDP for the debug log: each m= line's kind,
// direction and mid.
function describe(sdp) {
  return (sdp || '').split('\r\n').filter((l) => /^(m=|a=(sendrecv|sendonly|recvonly|inactive|mid:|simulcast))/.test(l))
    .map((l) => l.replace(/^m=(\w+).*/, '$1').replace(/^a=/, '')).join(' ');
}
