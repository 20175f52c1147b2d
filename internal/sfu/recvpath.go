package sfu

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/sfu/srtpseal"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

// The own receive path (part of DataPathOwn) takes publishers' RTP off
// pion's receive chain (UDP mux reader -> ICE conn -> SRTP session
// goroutine -> interceptors -> TrackRemote.Read: four goroutine hand-offs
// per packet). The node's batched socket (package batchconn) is under pion's mux;
// after each recvmmsg it looks every datagram's source address up in a
// read-mostly table of own-path sessions (copy on write behind an atomic
// pointer). A datagram from a registered address that is RTP (RFC 7983:
// first byte 128..191; RFC 5761 section 4: payload type not 64..95, which
// is RTCP) of an SSRC registered for that session is authenticated and
// decrypted with the client's SRTP keys (RFC 3711, RFC 7714), recorded for
// the publisher's feedback (NACK, receiver reports, TWCC) and forwarded
// inline, on the mux's reader goroutine; the whole batch's fan-outs are
// corked into one sendmmsg. The session's SRTCP is
// taken the same way (rtcpin.go). Everything else (STUN, DTLS, unknown
// SSRCs such as RTX, packets whose tag fails) goes to pion as before.
//
// Registration: pion still discovers tracks. The first packets of an SSRC
// go through pion, OnTrack fires, and the layer's read loop registers the
// SSRC after its first packet (seeding the rollover counter with that
// packet's sequence number); it unregisters when the track ends, and a
// participant leaving removes its session. A change of the selected
// candidate pair moves the session to the new address.
//
// A session is registered only when its own data path is active (the node is
// the DTLS server and knows the keys), its pair is over UDP and it has a
// receiveRecorder: without one, TWCC feedback would report every
// intercepted packet lost and the publisher's bandwidth estimate would
// collapse.

// receiveRecorder records an RTP packet that skipped pion's interceptor
// chain for the publisher's RTCP feedback (rtpfeedback.Interceptor's
// Receive). arrival is in unix nanoseconds; it must not keep h.
type receiveRecorder interface {
	Receive(h *rtp.Header, arrival int64)
}

// recvPath is a node's own receive path: the table of sessions by source
// address, read by the socket's one reader goroutine.
type recvPath struct {
	s *Server

	table atomic.Pointer[map[netip.AddrPort]*recvSession]
	mu    sync.Mutex // guards writes to table and every session's addr, gone

	// The reader goroutine's own: the packet being decrypted.
	scratch [1500]byte
	hdr     rtp.Header // pion's AES-CM DecryptRTP parse (reused)
	// rtcpHdr is DecryptRTCP's parse; resent is the buffer NACKs are
	// answered through (rtcpin.go).
	rtcpHdr rtcp.Header
	resent  [1500]byte

	taken, replays                         prometheus.Counter
	errAuth, errShort, errDecrypt, errSeed prometheus.Counter
	rtcp                                   rtcpCounters
}

func newRecvPath(s *Server) *recvPath {
	r := &recvPath{s: s}
	empty := map[netip.AddrPort]*recvSession{}
	r.table.Store(&empty)
	m := s.m
	r.taken, r.replays = m.recvTaken, m.recvReplays
	r.errAuth = m.recvErrors.WithLabelValues("auth")
	r.errShort = m.recvErrors.WithLabelValues("short")
	r.errDecrypt = m.recvErrors.WithLabelValues("decrypt")
	r.errSeed = m.recvErrors.WithLabelValues("header")
	r.rtcp = m.newRTCPCounters()
	return r
}

// recvSession is one own-path peer connection's receive state.
type recvSession struct {
	f   *ownPath
	rec receiveRecorder

	// key and salt are the client's SRTP master key and salt (RFC 5764
	// section 4.2), for profile.
	key, salt []byte
	profile   srtp.ProtectionProfile
	// ctx opens the AES-CM/HMAC profiles for every SSRC of the session
	// (pion's context, with its replay window); nil for the AEAD ones.
	ctx *srtp.Context
	// srtcp opens the session's SRTCP, every profile (pion's context with
	// its SRTCP replay window; the reader goroutine's alone); nil in
	// unit tests of pion's RTCP path. srtcpMin is the shortest SRTCP packet of the
	// profile.
	srtcp    *srtp.Context
	srtcpMin int

	streams atomic.Pointer[[]*recvStream] // copy on write, under smu
	smu     sync.Mutex                    // serialises writes to streams

	addr netip.AddrPort // where it is in the table; guarded by recvPath.mu
	gone bool           // removed for good; guarded by recvPath.mu
}

// recvStream is one registered SSRC: a layer of a published track.
type recvStream struct {
	sess *recvSession
	ssrc uint32
	t    *pubTrack
	l    *layer
	gcm  *srtpseal.GCM // the AEAD profiles; touched by the reader goroutine only
}

// newRecvSession returns f's receive state from the client's keys, or nil
// when the own receive path is off or cannot apply (no recorder).
func (s *Server) newRecvSession(f *ownPath) *recvSession {
	if s.recv == nil || f.recorder == nil {
		return nil
	}
	remote, err := f.keys.Remote()
	key, salt, profile := remote.Key, remote.Salt, remote.Profile
	if err != nil {
		return nil
	}
	rs := &recvSession{f: f, rec: f.recorder, key: key, salt: salt, profile: profile}
	switch profile {
	case srtp.ProtectionProfileAeadAes128Gcm, srtp.ProtectionProfileAeadAes256Gcm:
		if _, err := srtpseal.NewGCM(key, salt); err != nil {
			return nil
		}
	default:
		ctx, err := srtp.CreateContext(key, salt, profile, srtp.SRTPReplayProtection(srtpseal.ReplayWindow))
		if err != nil {
			return nil
		}
		rs.ctx = ctx
	}
	if err := rs.openSRTCP(); err != nil {
		return nil
	}
	empty := []*recvStream{}
	rs.streams.Store(&empty)
	return rs
}

// place puts sess in the table at its own data path's current remote address
// (or takes it out when that is not a UDP address).
func (r *recvPath) place(sess *recvSession) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if sess.gone {
		return
	}
	var to netip.AddrPort
	if ap := sess.f.remote.Load(); ap != nil {
		to = *ap
	}
	if to == sess.addr {
		return
	}
	old := *r.table.Load()
	n := make(map[netip.AddrPort]*recvSession, len(old)+1)
	for a, x := range old {
		if x != sess {
			n[a] = x
		}
	}
	if to.IsValid() {
		n[to] = sess
	}
	sess.addr = to
	r.table.Store(&n)
}

// remove takes sess out of the table for good.
func (r *recvPath) remove(sess *recvSession) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sess.gone = true
	old := *r.table.Load()
	if old[sess.addr] != sess {
		return
	}
	n := make(map[netip.AddrPort]*recvSession, len(old))
	for a, x := range old {
		if x != sess {
			n[a] = x
		}
	}
	r.table.Store(&n)
}

// registerReceive registers layer l's SSRC ssrc for the own receive path,
// its receive state seeded with seq, the sequence number of a packet pion
// already delivered; nil when the publisher's session has none.
func (t *pubTrack) registerReceive(l *layer, ssrc uint32, seq uint16) *recvStream {
	f := t.pub.own
	if f == nil {
		return nil
	}
	sess := f.recv.Load()
	if sess == nil {
		return nil
	}
	st := &recvStream{sess: sess, ssrc: ssrc, t: t, l: l}
	if sess.ctx == nil {
		g, err := srtpseal.NewGCM(sess.key, sess.salt)
		if err != nil {
			return nil
		}
		// That packet has index seq (ROC 0: pion's receiver, like ours,
		// starts its rollover counter at 0 on the first packet).
		g.StartAt(seq)
		st.gcm = g
	}
	sess.smu.Lock()
	storeFiltered(&sess.streams, func(x *recvStream) bool { return x.ssrc != st.ssrc }, st)
	sess.smu.Unlock()
	return st
}

// unregister gives the stream's SSRC back to pion and stops its layer's
// slow queue, if it has one.
func (st *recvStream) unregister() {
	st.l.mu.Lock()
	st.l.slowStopped = true
	if q := st.l.slow; q != nil {
		q.stop()
	}
	st.l.mu.Unlock()
	sess := st.sess
	sess.smu.Lock()
	defer sess.smu.Unlock()
	storeFiltered(&sess.streams, func(x *recvStream) bool { return x != st })
}

func (sess *recvSession) stream(ssrc uint32) *recvStream {
	for _, st := range *sess.streams.Load() {
		if st.ssrc == ssrc {
			return st
		}
	}
	return nil
}

// rtpHeaderLen returns the length of the RTP header at the start of p
// (RFC 3550 section 5.1 and 5.3.1) and whether its extension uses a
// cryptex profile (RFC 9335, encrypted extensions: left to pion).
func rtpHeaderLen(p []byte) (n int, cryptex, ok bool) {
	n = 12 + 4*int(p[0]&0x0f)
	if len(p) < n {
		return 0, false, false
	}
	if p[0]&0x10 != 0 {
		if len(p) < n+4 {
			return 0, false, false
		}
		profile := binary.BigEndian.Uint16(p[n:])
		cryptex = profile == 0xc0de || profile == 0xc2de
		n += 4 + 4*int(binary.BigEndian.Uint16(p[n+2:]))
		if len(p) < n {
			return 0, false, false
		}
	}
	return n, cryptex, true
}

// Active reports whether any session is on the own receive path
// (batchconn.Interceptor).
func (r *recvPath) Active() bool { return len(*r.table.Load()) != 0 }

// Intercept takes the datagram m if it is RTP of a registered stream: it
// opens and forwards it and returns true; SRTCP of a registered session
// goes to interceptRTCP. false hands it to pion. It runs on the socket's
// reader goroutine, inside the batch's cork. now is the batch's arrival
// (unix nanoseconds). It does not allocate for RTP (TestRecvPathAllocs).
// It is the node's batchconn.Interceptor.
func (r *recvPath) Intercept(m *udpio.Message, now int64) bool {
	p := m.Payload()
	if len(p) < 12 || p[0] < 128 || p[0] > 191 {
		return false // STUN, DTLS, TURN channel data, or too short
	}
	sess := (*r.table.Load())[m.Addr]
	if sess == nil {
		return false
	}
	if pt := p[1] & 0x7f; pt >= 64 && pt <= 95 {
		return r.interceptRTCP(sess, p, now) // SRTCP
	}
	st := sess.stream(binary.BigEndian.Uint32(p[8:]))
	if st == nil {
		return false // not (yet) registered, RTX, or another session's
	}
	hn, cryptex, ok := rtpHeaderLen(p)
	if !ok {
		r.errSeed.Inc()
		return false
	}
	if cryptex {
		return false
	}
	// The layer's mutex is held from here: an AEAD packet is opened
	// straight into its slot of the layer's cache (not for a replay,
	// which must not empty the slot of the packet it repeats).
	l := st.l
	l.mu.Lock()
	defer l.mu.Unlock()
	var plain []byte
	if st.gcm != nil {
		seq := binary.BigEndian.Uint16(p[2:])
		dst := r.scratch[:]
		if l.cache != nil && !st.gcm.Replayed(seq) {
			dst = l.cache.claim(seq)
		}
		n, res := st.gcm.Open(dst, p, hn, st.ssrc, seq)
		switch res {
		case srtpseal.OpenReplay:
			r.replays.Inc()
			return true // dropped: pion would not know it was a replay
		case srtpseal.OpenShort:
			r.errShort.Inc()
			return false
		case srtpseal.OpenAuth:
			r.errAuth.Inc()
			return false // untouched: pion's own checks decide
		}
		plain = dst[:n]
	} else {
		out, err := sess.ctx.DecryptRTP(r.scratch[:0], p, &r.hdr)
		switch {
		case err == nil && len(out) <= len(r.scratch):
			plain = out
		case isDuplicated(err):
			r.replays.Inc()
			return true
		default:
			r.errDecrypt.Inc()
			return false
		}
	}
	r.taken.Inc()
	r.s.ownReceived.Add(1)
	st.t.forward(l, plain, now, sess.rec)
	return true
}

// isDuplicated reports whether pion's srtp refused a packet as a replay
// (its error type is unexported; the text is its errDuplicated's).
func isDuplicated(err error) bool {
	return err != nil && strings.Contains(err.Error(), "duplicated packet")
}

// OwnReceivePackets returns how many publishers' RTP packets the own
// receive path (part of DataPathOwn) took, and how many came through
// pion's receive path, since the node started.
func (s *Server) OwnReceivePackets() (own, pion uint64) {
	return s.ownReceived.Load(), s.pionReceived.Load()
}

// onPionPath reports whether d's subscriber is on pion's write path for
// good (own data path off or fallen back): its write may block (an ICE-TCP
// connection whose peer stopped reading), so the own receive path must not
// make it on the socket's reader goroutine.
func (d *downTrack) onPionPath() bool {
	return d.sub != nil && (d.sub.own == nil || d.sub.own.fellBack.Load())
}

// slowQueue carries one layer's intercepted packets to the subscribers on
// pion's write path, from a goroutine of its own: a blocked write there
// stalls that goroutine, not the node's socket. Bounded; a packet that
// finds it full is dropped and counted (traverse_sfu_fast_receive_slow_drops_total).
type slowQueue struct {
	t *pubTrack
	l *layer

	mu         sync.Mutex // guards slots, head, n, closed
	slots      [slowQueueLen]slowSlot
	head, n    int
	closed     bool
	wake, done chan struct{}
}

// slowQueueLen is the most packets queued per layer: 64 is about a third
// of a second of 2 Mbit/s video.
const slowQueueLen = 64

type slowSlot struct {
	buf [1500]byte
	n   int
	now int64
}

// slowQueueLocked returns l's queue, starting it on first use; nil when
// the track is closed. l.mu is held.
func (t *pubTrack) slowQueueLocked(l *layer) *slowQueue {
	if l.slow != nil || l.slowStopped || t.closed.Load() {
		return l.slow
	}
	q := &slowQueue{t: t, l: l, wake: make(chan struct{}, 1), done: make(chan struct{})}
	l.slow = q
	s := t.r.s
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		q.run()
	}()
	return q
}

// push queues a copy of the decrypted packet raw. It does not allocate.
func (q *slowQueue) push(raw []byte, now int64) {
	q.mu.Lock()
	if q.closed || q.n == slowQueueLen || len(raw) > len(q.slots[0].buf) {
		q.mu.Unlock()
		q.t.r.s.m.recvSlowDrops.Inc()
		return
	}
	sl := &q.slots[(q.head+q.n)%slowQueueLen]
	sl.n, sl.now = copy(sl.buf[:], raw), now
	q.n++
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// stop ends the queue's goroutine; packets still queued are dropped.
func (q *slowQueue) stop() {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.done)
	}
	q.mu.Unlock()
}

// run writes queued packets to the layer's pion-path subscribers until
// stop.
func (q *slowQueue) run() {
	var pkt rtp.Packet
	var buf [1500]byte
	for {
		select {
		case <-q.done:
			return
		case <-q.wake:
		}
		for {
			q.mu.Lock()
			if q.n == 0 || q.closed {
				q.mu.Unlock()
				break
			}
			sl := &q.slots[q.head]
			n, now := copy(buf[:], sl.buf[:sl.n]), sl.now
			q.head = (q.head + 1) % slowQueueLen
			q.n--
			q.mu.Unlock()
			if pkt.Unmarshal(buf[:n]) != nil {
				continue
			}
			key := q.t.kind == webrtc.RTPCodecTypeVideo && q.t.ck.Keyframe(pkt.Payload)
			for _, d := range *q.t.downs.Load() {
				if d.onPionPath() {
					d.write(q.l.idx, &pkt, key, now)
				}
			}
		}
	}
}
