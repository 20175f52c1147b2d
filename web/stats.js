// Connection statistics from RTCPeerConnection.getStats (W3C
// webrtc-stats): the path of the selected candidate pair, RTT, and per
// track bitrate, loss and decoded frames.

// pathOf returns the selected candidate pair's local and remote candidate
// types ("host", "srflx", "prflx", "relay"), its RTT in ms and protocol.
export function pathOf(report) {
  let pair = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
  });
  if (!pair) {
    report.forEach((s) => {
      if (!pair && s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) pair = s;
    });
  }
  if (!pair) return null;
  const local = report.get(pair.localCandidateId) || {};
  const remote = report.get(pair.remoteCandidateId) || {};
  return {
    local: local.candidateType || '?',
    remote: remote.candidateType || '?',
    protocol: local.relayProtocol || local.protocol || '?',
    address: remote.address ? `${remote.address}:${remote.port}` : '',
    rttMs: pair.currentRoundTripTime !== undefined ? Math.round(pair.currentRoundTripTime * 1000) : null,
  };
}

// Meter turns successive reports into rates.
export class Meter {
  constructor() { this.prev = new Map(); }

  // inbound returns one entry per inbound-rtp stream: kind, track id,
  // bitrate (kbit/s), loss (%), frames decoded, packets received.
  inbound(report) {
    const out = [];
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      out.push({
        kind: s.kind,
        trackId: s.trackIdentifier,
        mid: s.mid,
        kbps: this.rate(s.id, s.bytesReceived, s.timestamp),
        lossPct: loss(s.packetsLost, s.packetsReceived),
        packetsReceived: s.packetsReceived || 0,
        packetsLost: s.packetsLost || 0,
        framesDecoded: s.framesDecoded || 0,
        fps: s.framesPerSecond || 0,
        jitterMs: s.jitter !== undefined ? Math.round(s.jitter * 1000) : null,
      });
    });
    return out;
  }

  // outbound sums outbound-rtp by kind: bitrate and packets sent.
  outbound(report) {
    const out = {};
    report.forEach((s) => {
      if (s.type !== 'outbound-rtp') return;
      const o = out[s.kind] || (out[s.kind] = { kbps: 0, packetsSent: 0, framesEncoded: 0 });
      o.kbps += this.rate(s.id, s.bytesSent, s.timestamp);
      o.packetsSent += s.packetsSent || 0;
      o.framesEncoded += s.framesEncoded || 0;
    });
    return out;
  }

  rate(id, bytes, ts) {
    const p = this.prev.get(id);
    this.prev.set(id, { bytes, ts });
    if (!p || ts <= p.ts) return 0;
    return Math.round(((bytes - p.bytes) * 8) / (ts - p.ts)); // bits per ms = kbit/s
  }
}

function loss(lost, received) {
  lost = Math.max(0, lost || 0);
  const total = lost + (received || 0);
  return total ? Math.round((1000 * lost) / total) / 10 : 0;
}
