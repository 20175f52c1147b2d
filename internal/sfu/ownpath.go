package sfu

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/rtpfeedback"
	"github.com/traverse-rtc/traverse/internal/sfu/gcc"
	"github.com/traverse-rtc/traverse/internal/sfu/srtpseal"
)

// The own data path (DataPathOwn) forwards RTP to a subscriber with the
// node's own SRTP context (RFC 3711) and the node's own batched socket
// write, instead of pion's per-subscriber write stack (interceptor chain,
// SRTP session, mux endpoint, ICE conn, UDP mux, one sendto per packet).
// Only forwarded media takes it, and the node's own RTCP (rtcpout.go); DTLS, SCTP and ICE stay with pion.
//
// Keys: every peer connection of an own-path node gets its own webrtc.API
// whose SettingEngine reports that connection's DTLS handshake to a
// srtpseal.Secrets; the node answers as DTLS server, so it sees
// both randoms, the master secret, the cipher suite and the SRTP profile,
// and derives the SRTP keys as pion does. The keys are taken when the DTLS
// transport reports "connected", before pion starts its own SRTP session,
// so pion never encrypts an RTP packet of an own-path subscriber's SSRCs:
// their rollover counters are ours alone. When the node ended up DTLS
// client, or the keys cannot be derived, the subscriber stays on pion's
// path (traverse_sfu_fast_path_fallbacks_total).
//
// Destination: the remote address of the selected ICE candidate pair
// (tracked through OnSelectedCandidatePairChange: an ICE-lite node's
// remote can change). A pair over TCP has no UDP address: packets are
// dropped and counted, never handed back to pion (whose SRTP state for
// the SSRC would not match ours); a subscriber whose pair is over TCP when
// DTLS completes stays on pion's path.
//
// Sender reports: pion's report interceptor no longer sees these packets,
// so the node sends an RTCP SR per own-path stream every second from its
// own counters (sendReports), through the session's RTCP writer.
type ownPath struct {
	s    *Server
	part *participant // whose peer connection it is; set before it is used
	keys sessionKeys

	// key, salt and profile are set once, before active is.
	key, salt []byte
	profile   srtp.ProtectionProfile
	active    atomic.Bool

	remote atomic.Pointer[netip.AddrPort] // nil or invalid: no UDP destination
	pc     atomic.Pointer[webrtc.PeerConnection]

	// feedback is the peer connection's receive-side RTCP feedback (NACK,
	// receiver reports, TWCC) toward its publishers, set before the peer
	// connection is returned. pion's chain feeds it the packets pion
	// reads; a packet the node reads past pion must be given to
	// feedback.Receive.
	feedback *rtpfeedback.Interceptor

	mu     sync.Mutex // guards tracks
	tracks []*downTrack

	// recorder takes the packets the own receive path intercepts for the
	// publisher's feedback (recvpath.go): feedback, unless a test gives
	// another; set in newPeerConnection. recv
	// is the session's receive state once the keys are known, nil while
	// the own receive path does not apply.
	recorder receiveRecorder
	recv     atomic.Pointer[recvSession]
	// fellBack is set when the subscriber stays on pion's write path
	// (activate failed): pion's write may block (ICE-TCP), so the own
	// receive path hands its packets to a queue (slowQueue) instead of
	// writing them on the socket's reader goroutine.
	fellBack atomic.Bool
	// cc numbers the packets of subscribers that negotiated transport-cc
	// and estimates their downlink from the feedback (package gcc).
	cc *gcc.SendSide
	// rtcp is the writer every RTCP of the peer connection ends in
	// (rtcpout.go).
	rtcp *rtcpOut
}

// sessionKeys is what the own data path needs of a peer connection's
// DTLS handshake: hooks on its setting engine, then the SRTP keys of
// each direction (srtpseal.Secrets, the one coupling to pion's DTLS
// internals).
type sessionKeys interface {
	Attach(se *webrtc.SettingEngine) error
	Local() (srtpseal.Keys, error)
	Remote() (srtpseal.Keys, error)
}

// newOwnPath returns a participant's own-path state, nil when the
// own data path is off.
func (s *Server) newOwnPath() *ownPath {
	if !s.cfg.DataPath.own() {
		return nil
	}
	f := &ownPath{s: s, cc: gcc.New(time.Now().UnixNano()), keys: &srtpseal.Secrets{}}
	f.rtcp = &rtcpOut{f: f}
	return f
}

// newPeerConnection creates p's peer connection: on the node's shared API,
// or, with the own data path, on an API of its own whose DTLS hooks report to
// p's ownPath.
func (s *Server) newPeerConnection(p *participant) (*webrtc.PeerConnection, error) {
	f := p.own
	if f == nil {
		if p.ice == nil {
			return s.api.NewPeerConnection(webrtc.Configuration{})
		}
		se := s.se
		setICE(&se, p)
		api := webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(s.me),
			webrtc.WithInterceptorRegistry(s.registry(nil, s.fb)))
		return api.NewPeerConnection(s.pcConfig(p))
	}
	f.part = p
	opts := []rtpfeedback.Option{rtpfeedback.WithCounters(&s.feedback)}
	var out interceptor.Factory
	if f.rtcp != nil {
		opts = append(opts, rtpfeedback.WithWriter(f.rtcp))
		out = f.rtcp
	}
	fb, err := rtpfeedback.New(opts...)
	if err != nil {
		return nil, err
	}
	se := s.se
	setICE(&se, p)
	// The own data path needs the server's view of the handshake (both
	// randoms): the node answers "passive", clients are DTLS clients.
	if err := f.keys.Attach(&se); err != nil {
		_ = fb.Close()
		return nil, err
	}
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(s.me),
		webrtc.WithInterceptorRegistry(s.registry(out, fb.Factory())))
	pc, err := api.NewPeerConnection(s.pcConfig(p))
	if err != nil {
		_ = fb.Close()
		return nil, err
	}
	f.feedback = fb
	dt := pc.SCTP().Transport()
	it := dt.ICETransport()
	// Called with the DTLS transport's lock held, before pion starts SRTP:
	// nothing here may call the DTLS transport (its ICETransport() takes
	// that lock: a self-deadlock that once stalled one session in ten of
	// TestFiftyPeerConnections...).
	dt.OnStateChange(func(st webrtc.DTLSTransportState) {
		if st == webrtc.DTLSTransportStateConnected {
			if f.remote.Load() == nil {
				// The pair callback may still be queued; the agent's
				// selected pair is an atomic load.
				pair, _ := it.GetSelectedCandidatePair()
				f.setPair(pair)
			}
			f.activate()
		}
	})
	it.OnSelectedCandidatePairChange(f.setPair)
	// The own receive path feeds the packets it takes past pion's chain
	// to the same feedback (recvpath.go).
	f.recorder = fb
	if s.cfg.newRecorder != nil {
		f.recorder = s.cfg.newRecorder()
	}
	f.pc.Store(pc)
	return pc, nil
}

// activate derives the node's SRTP keys once the handshake is done, if
// the selected pair is over UDP (an ICE-TCP subscriber stays with pion).
func (f *ownPath) activate() {
	if f.active.Load() {
		return
	}
	if ap := f.remote.Load(); ap == nil || !ap.IsValid() {
		f.fellBack.Store(true)
		f.s.m.ownFallbacks.Inc()
		return
	}
	local, err := f.keys.Local()
	key, salt, profile := local.Key, local.Salt, local.Profile
	if err != nil {
		f.s.log.Debug("sfu: own data path unavailable", "err", err)
		f.fellBack.Store(true)
		f.s.m.ownFallbacks.Inc()
		return
	}
	// A context made here proves the keys and profile usable; it is the
	// session's SRTCP context with the own RTCP send.
	ctx, err := srtp.CreateContext(key, salt, profile)
	if err != nil {
		f.fellBack.Store(true)
		f.s.m.ownFallbacks.Inc()
		return
	}
	if f.rtcp != nil {
		f.rtcp.enable(ctx)
	}
	f.key, f.salt, f.profile = key, salt, profile
	f.active.Store(true)
	f.s.m.ownActive.Inc()
	f.s.ownSessions.Add(1)
	if rs := f.s.newRecvSession(f); rs != nil {
		f.recv.Store(rs)
		f.s.recv.place(rs)
		f.s.m.recvSessions.Inc()
	}
}

// close takes the session off the own receive path.
func (f *ownPath) close() {
	if rs := f.recv.Load(); rs != nil {
		f.s.recv.remove(rs)
	}
}

// OwnPathSessions returns how many peer connections have taken the own
// path (DataPathOwn) since the node started.
func (s *Server) OwnPathSessions() uint64 { return s.ownSessions.Load() }

// setPair follows the selected candidate pair.
func (f *ownPath) setPair(pair *webrtc.ICECandidatePair) {
	var a netip.AddrPort
	if pair != nil && pair.Remote != nil && pair.Remote.Protocol == webrtc.ICEProtocolUDP &&
		(pair.Local == nil || pair.Local.Protocol == webrtc.ICEProtocolUDP) {
		if ip, err := netip.ParseAddr(pair.Remote.Address); err == nil {
			a = netip.AddrPortFrom(ip.Unmap(), pair.Remote.Port)
		}
	}
	f.remote.Store(&a)
	if rs := f.recv.Load(); rs != nil {
		f.s.recv.place(rs) // a pair change moves the session to its new address
	}
}

// ownOut is one downTrack's own-path state, guarded by the downTrack's
// mutex.
type ownOut struct {
	f    *ownPath
	gcm  *srtpseal.GCM // the AEAD profiles, else ctx
	ctx  *srtp.Context // this SSRC's context: its rollover state is ours alone
	buf  [ownMTU]byte  // the packet being encrypted, in place, when nothing is corked
	hdr  rtp.Header    // EncryptRTP's parse of buf (reused: no allocation)
	tail int           // authentication tag length of the profile

	// The packet send hands to fill: its header, the header's
	// marshalled length, its payload.
	h       *rtp.Header
	hn      int
	payload []byte

	// twccID is the subscriber's transport-cc extension id (0: not
	// negotiated); exts and twcc back the header's extension so that
	// setting it does not allocate.
	twccID uint8
	exts   [1]rtp.Extension
	twcc   [2]byte

	// Sender report state (RFC 3550 section 6.4.1), as pion's report
	// interceptor keeps it.
	packets, octets uint32
	lastTS          uint32
	lastTSAt        int64 // unix nanoseconds when lastTS was first sent
}

// ownMTU is the largest datagram the own data path sends; a larger packet is
// dropped and counted (traverse_sfu_fast_path_drops_total).
const ownMTU = 1500

// ownLocked returns the downTrack's own-path writer, making it on the
// first packet after the subscriber's keys are known; nil means pion's
// path. Once a downTrack has a ownOut it keeps it. d.mu is held.
func (d *downTrack) ownLocked() *ownOut {
	if d.own != nil || d.sub == nil || d.sub.own == nil || !d.sub.own.active.Load() {
		return d.own
	}
	f := d.sub.own
	o := &ownOut{f: f, twccID: d.twccID}
	switch f.profile {
	case srtp.ProtectionProfileAeadAes128Gcm, srtp.ProtectionProfileAeadAes256Gcm:
		g, err := srtpseal.NewGCM(f.key, f.salt)
		if err != nil {
			return nil
		}
		o.gcm, o.tail = g, srtpseal.TagLen
	default:
		ctx, err := srtp.CreateContext(f.key, f.salt, f.profile)
		if err != nil {
			return nil
		}
		tail, err := f.profile.AuthTagRTPLen()
		if err != nil {
			return nil
		}
		o.ctx, o.tail = ctx, tail
	}
	d.own = o
	f.mu.Lock()
	f.tracks = append(f.tracks, d)
	f.mu.Unlock()
	return d.own
}

// send encrypts header h and payload into the datagram buffer and queues
// it on the node's socket to the subscriber's address. now is the time it
// is sent (unix nanoseconds). It does not allocate
// (TestOwnPathWriteAllocs).
func (o *ownOut) send(h *rtp.Header, payload []byte, now int64) bool {
	m := o.f.s.m
	ap := o.f.remote.Load()
	if ap == nil || !ap.IsValid() {
		m.ownDrops.Inc()
		return false
	}
	var tseq uint16
	cc := o.f.cc
	if o.twccID != 0 && cc != nil {
		// The transport-wide sequence number (draft-holmer-rmcat-
		// transport-wide-cc-extensions-01 section 2), replacing any
		// extension the header had.
		h.Extension, h.ExtensionProfile, h.Extensions = false, 0, o.exts[:0]
		if err := h.SetExtension(o.twccID, o.twcc[:]); err != nil {
			m.ownDrops.Inc()
			return false
		}
	}
	hn := h.MarshalSize()
	if hn+len(payload)+o.tail > len(o.buf) {
		m.ownDrops.Inc()
		return false
	}
	if o.twccID != 0 && cc != nil {
		tseq = cc.Next()
		o.twcc[0], o.twcc[1] = byte(tseq>>8), byte(tseq)
	}
	// fill encrypts the packet straight into the socket's queue when
	// corked (batchconn.Conn.WriteFilled), else into o.buf.
	o.h, o.hn, o.payload = h, hn, payload
	size, ok, err := o.f.s.out.WriteFilled(o, o.buf[:], *ap)
	o.h, o.payload = nil, nil
	if !ok {
		if err == nil {
			m.ownDrops.Inc()
		}
		return false
	}
	if o.twccID != 0 && cc != nil {
		cc.Record(tseq, size, now)
	}
	if o.packets == 0 || h.Timestamp != o.lastTS {
		o.lastTS, o.lastTSAt = h.Timestamp, now
	}
	o.packets++
	o.octets += uint32(len(payload))
	return true
}

// Fill writes the SRTP packet of o.h (marshalled length o.hn) and
// o.payload into buf, which holds ownMTU bytes, and returns its length
// (batchconn.Filler).
func (o *ownOut) Fill(buf []byte) (int, bool) {
	hn := o.hn
	if _, err := o.h.MarshalTo(buf[:hn]); err != nil {
		return 0, false
	}
	n := hn + copy(buf[hn:], o.payload)
	if o.gcm != nil {
		out, ok := o.gcm.Seal(buf, hn, n, o.h.SSRC, o.h.SequenceNumber)
		return len(out), ok
	}
	out, err := o.ctx.EncryptRTP(buf[:0], buf[:n], &o.hdr)
	// pion encrypts in place unless buf is too small (ownMTU leaves
	// room for the tag): a copy elsewhere is not what was queued.
	if err != nil || len(out) == 0 || len(out) > len(buf) || &out[0] != &buf[0] {
		return 0, false
	}
	return len(out), true
}

// report returns the stream's sender report at now, or false before its
// first packet (RFC 3550 section 6.4: then it is not a sender). d.mu is
// held.
func (o *ownOut) report(ssrc, clock uint32, now time.Time) (rtcp.SenderReport, bool) {
	if o.packets == 0 {
		return rtcp.SenderReport{}, false
	}
	elapsed := now.UnixNano() - o.lastTSAt
	return rtcp.SenderReport{
		SSRC:        ssrc,
		NTPTime:     ntpTime(now),
		RTPTime:     o.lastTS + uint32(float64(elapsed)*float64(clock)/float64(time.Second)),
		PacketCount: o.packets,
		OctetCount:  o.octets,
	}, true
}

// ntpTime is t as a 64-bit NTP timestamp (RFC 5905 section 6).
func ntpTime(t time.Time) uint64 {
	const ntpEpochOffset = 2208988800 // 1900 to 1970, seconds
	ns := uint64(t.UnixNano())
	secs := ns/uint64(time.Second) + ntpEpochOffset
	frac := (ns % uint64(time.Second)) << 32 / uint64(time.Second)
	return secs<<32 | frac
}

// srInterval is how often sender reports go out for own-path streams:
// pion's report interceptor's default.
const srInterval = time.Second

// sendReports sends one RTCP packet of sender reports per own-path
// subscriber, for every stream of it that has sent RTP; streams unbound
// since are forgotten.
func (s *Server) sendReports(now time.Time) {
	s.mu.Lock()
	parts := make([]*participant, 0, len(s.sessions))
	for _, p := range s.sessions {
		if p.own != nil && p.own.active.Load() {
			parts = append(parts, p)
		}
	}
	s.mu.Unlock()
	for _, p := range parts {
		f := p.own
		f.mu.Lock()
		tracks := append([]*downTrack(nil), f.tracks...)
		f.mu.Unlock()
		var pkts []rtcp.Packet
		var gone []*downTrack
		for _, d := range tracks {
			d.mu.Lock()
			if d.ws == nil {
				gone = append(gone, d)
			} else if sr, ok := d.own.report(d.ssrc, d.clock, now); ok {
				pkts = append(pkts, &sr)
			}
			d.mu.Unlock()
		}
		if len(gone) > 0 {
			f.mu.Lock()
			kept := f.tracks[:0]
			for _, d := range f.tracks {
				if !containsDown(gone, d) {
					kept = append(kept, d)
				}
			}
			clear(f.tracks[len(kept):])
			f.tracks = kept
			f.mu.Unlock()
		}
		if len(pkts) > 0 {
			if err := p.writeRTCP(pkts); err == nil {
				s.m.ownReports.Add(float64(len(pkts)))
			}
		}
	}
}

func containsDown(ds []*downTrack, d *downTrack) bool {
	for _, x := range ds {
		if x == d {
			return true
		}
	}
	return false
}
