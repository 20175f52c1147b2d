// A client of traverse's signaling protocol (docs/signal.md): JSON text
// frames over one WebSocket.
export class Signal {
  constructor(url) {
    this.url = url;
    this.handlers = new Map();
    this.ws = null;
  }

  // on registers fn for server messages of type ("joined", "offer", ...);
  // "close" is called when the socket closes.
  on(type, fn) { this.handlers.set(type, fn); return this; }

  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error('signaling connection failed'));
      ws.onclose = (e) => this.emit('close', { code: e.code, reason: e.reason });
      ws.onmessage = (e) => {
        let m;
        try { m = JSON.parse(e.data); } catch { return; }
        if (this.debug) this.debug('<-', m.type, m.type === 'offer' || m.type === 'answer' ? describe(m.sdp) : '');
        this.emit(m.type, m);
      };
    });
  }

  emit(type, m) {
    const fn = this.handlers.get(type);
    if (fn) fn(m);
  }

  send(m) {
    if (this.debug) this.debug('->', m.type, m.type === 'offer' || m.type === 'answer' ? describe(m.sdp) : '');
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(m));
  }

  close() { if (this.ws) this.ws.close(); }
}

// describe summarizes an SDP for the debug log: each m= line's kind,
// direction and mid.
function describe(sdp) {
  return sdp.split('\r\n').filter((l) => /^(m=|a=(sendrecv|sendonly|recvonly|inactive|mid:|simulcast))/.test(l))
    .map((l) => l.replace(/^m=(\w+).*/, '$1').replace(/^a=/, '')).join(' ');
}
