// Package sfu is the WebRTC selective forwarding unit of traverse (one port, signaling apart):
// rooms whose participants publish audio, video and data-channel messages
// and subscribe to everyone else's, every peer connection of the node on
// ONE UDP port and one ICE-TCP port (RFC 6544), demultiplexed by the ICE
// ufrag of the first STUN binding request (RFC 8445 section 7.2.2) and then
// by the client's source address. The node is ICE-lite (RFC 8445 section
// 2.5): it sits on a public address and only answers checks.
//
// Forwarding rewrites SSRC, payload type, sequence numbers and timestamps
// per subscriber (RFC 3550), so a subscriber can switch simulcast layer
// (RFC 8853) on a keyframe without a discontinuity; NACKs (RFC 4585) are
// answered from a per-subscriber packet cache, PLI/FIR are passed to the
// publisher, throttled; receiver reports and transport-wide congestion
// control feedback are generated for publishers, and REMB from subscribers
// chooses their simulcast layer. Audio levels (RFC 6464) make
// active-speaker events.
//
// On its own data path (Config.DataPath, DataPathOwn by default) the node
// forwards RTP with SRTP of its own (RFC 3711, RFC 7714) in both
// directions: publishers' packets are decrypted and fanned out from the
// socket's reader (recvpath.go), subscribers' are sealed and sent with
// sendmmsg (ownpath.go). Clients' SRTCP is opened there too (rtcpin.go),
// and the node's own RTCP is sealed and sent by the node (rtcpout.go);
// pion keeps ICE, DTLS and SCTP, and whatever RTCP those leave it.
//
// The node takes its work from the bus (package bus): join, offer, answer,
// candidate and leave requests from signal servers.
package sfu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/report"
	"github.com/pion/logging"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/rtpfeedback"
	"github.com/traverse-rtc/traverse/internal/sfu/batchconn"
	"github.com/traverse-rtc/traverse/internal/sfu/srtpseal"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

// Server is one SFU node.
type Server struct {
	cfg Config
	log *slog.Logger
	bus *bus.Client
	api *webrtc.API
	m   *metrics

	// se, me and interceptors build api; with the own data path every peer
	// connection gets an API of its own from them, with its own
	// rtpfeedback.Interceptor (ownpath.go).
	se           webrtc.SettingEngine
	me           *webrtc.MediaEngine
	interceptors []interceptor.Factory

	udp    *net.UDPConn
	batch  *batchconn.Conn // nil on DataPathPion
	out    *batchconn.Conn // the own data path's writer (batch); nil unless DataPathOwn
	tcp    *net.TCPListener
	udpMux *ice.UDPMuxDefault
	tcpMux ice.TCPMux

	mu       sync.Mutex // guards sessions, rooms, closed
	sessions map[string]*participant
	rooms    map[string]*room
	closed   bool

	wg sync.WaitGroup // participants' goroutines

	sub       *bus.Subscription
	closeOnce sync.Once
	// drain is the drain's state (drain.go).
	drain     drainState
	forwarded atomic.Uint64
	received  atomic.Uint64
	// ownSessions counts peer connections that took the own data path.
	ownSessions atomic.Uint64
	// recv is the own receive path (recvpath.go); nil unless
	// DataPathOwn. pionReceived counts the publishers' packets
	// that came through pion's receive path (the layers' read loops),
	// ownReceived those the own receive path took.
	recv         *recvPath
	pionReceived atomic.Uint64
	ownReceived  atomic.Uint64
	// ownRTCP counts the clients' RTCP packets the own RTCP path took
	// (rtcpin.go), pionRTCP those the node's readers got
	// from pion; asyncKeyframes is the own RTCP path's keyframe requests
	// in flight from goroutines of their own.
	ownRTCP, pionRTCP atomic.Uint64
	asyncKeyframes    atomic.Int32
	// feedback sums every peer connection's rtpfeedback counters.
	feedback rtpfeedback.Counters
	// casc is the node's cascade (cascade.go); its endpoint is nil when off.
	casc cascadeState
	// grp is the node's balanced group (group.go); its cert is nil when
	// the node is in none.
	grp groupState
	// fb is the shared API's feedback factory (a group session without
	// the own data path builds its API with it).
	fb interceptor.Factory
}

// New binds the node's UDP port and TCP listener. It serves the bus once
// Run is called; Close releases what New took if Run is never called.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Log, bus: cfg.Bus, sessions: map[string]*participant{}, rooms: map[string]*room{}}
	s.drain.empty = make(chan struct{})
	if err := s.openGroup(); err != nil {
		return nil, err
	}
	uc, err := udpio.Listen(context.Background(), "udp", cfg.UDP.String(), udpio.Options{ReadBuffer: 4 << 20, WriteBuffer: 4 << 20})
	if err != nil {
		return nil, fmt.Errorf("sfu: %w", err)
	}
	s.udp = uc.UDPConn()
	if s.cfg.NodeID == "" {
		s.cfg.NodeID = fmt.Sprintf("sfu-%d", s.UDPAddr().Port())
	}
	types, err := s.muxes(uc)
	if err != nil {
		return nil, err
	}
	se := s.settingEngine(types)
	me := &webrtc.MediaEngine{}
	if err := registerCodecs(me); err != nil {
		s.closeSockets()
		return nil, err
	}
	base, err := registerInterceptors(me)
	if err != nil {
		s.closeSockets()
		return nil, err
	}
	fb, err := rtpfeedback.NewFactory(rtpfeedback.WithCounters(&s.feedback))
	if err != nil {
		s.closeSockets()
		return nil, err
	}
	s.se, s.me, s.interceptors, s.fb = se, me, base, fb
	ir := s.registry(nil, fb)
	s.api = webrtc.NewAPI(webrtc.WithSettingEngine(se), webrtc.WithMediaEngine(me), webrtc.WithInterceptorRegistry(ir))
	s.m = newMetrics(s, cfg.Registerer)
	if cfg.DataPath.own() {
		s.recv = newRecvPath(s)
		s.batch.SetInterceptor(s.recv)
	}
	if err := s.openCascade(); err != nil {
		s.closeSockets()
		return nil, err
	}
	return s, nil
}

// muxes puts pion's ICE muxes on the node's sockets: the UDP socket (under
// the batched socket on the own and pion-batched data paths) and, with
// Config.TCP, a new TCP listener. It returns the network types they serve.
func (s *Server) muxes(uc *udpio.Conn) ([]webrtc.NetworkType, error) {
	cfg := s.cfg
	// The muxes log every packet that arrives for a session just closed;
	// that is normal on a busy port, so they stay quiet.
	quiet := logging.NewDefaultLoggerFactory()
	quiet.DefaultLogLevel = logging.LogLevelDisabled
	var pconn net.PacketConn = s.udp
	if cfg.DataPath.batched() {
		// The own receive path reads the socket under pion's mux.
		s.batch = batchconn.New(uc)
		pconn = s.batch
	}
	if cfg.DataPath.own() {
		s.out = s.batch
	}
	if s.grp.cert != nil {
		pconn = groupGate{PacketConn: pconn, s: s}
	}
	s.udpMux = ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: pconn, Logger: quiet.NewLogger("udpmux")})
	types := []webrtc.NetworkType{webrtc.NetworkTypeUDP4, webrtc.NetworkTypeUDP6}
	if cfg.TCP.IsValid() {
		tcp, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(cfg.TCP))
		if err != nil {
			s.udpMux.Close()
			return nil, fmt.Errorf("sfu: listen tcp %s: %w", cfg.TCP, err)
		}
		s.tcp = tcp
		s.tcpMux = ice.NewTCPMuxDefault(ice.TCPMuxParams{Listener: tcp, Logger: quiet.NewLogger("tcpmux"), ReadBufferSize: 64})
		types = append(types, webrtc.NetworkTypeTCP4, webrtc.NetworkTypeTCP6)
	}
	return types, nil
}

// settingEngine is the setting engine every peer connection of the node
// starts from: ICE-lite on the node's muxes, loopback candidates allowed,
// no mDNS, the public address in the candidates, an SRTP replay window of
// srtpseal.ReplayWindow.
func (s *Server) settingEngine(types []webrtc.NetworkType) webrtc.SettingEngine {
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelError
	se := webrtc.SettingEngine{LoggerFactory: lf}
	se.SetLite(true)
	se.SetICEUDPMux(s.udpMux)
	if s.tcpMux != nil {
		se.SetICETCPMux(s.tcpMux)
	}
	se.SetNetworkTypes(types)
	se.SetIncludeLoopbackCandidate(true)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	// Publishers' retransmissions arrive behind newer packets: pion's
	// path keeps the own path's window (browsers'), not pion's 64.
	se.SetSRTPReplayProtectionWindow(srtpseal.ReplayWindow)
	if s.cfg.PublicIP.IsValid() {
		se.SetNAT1To1IPs([]string{s.cfg.PublicIP.String()}, webrtc.ICECandidateTypeHost)
	}
	return se
}

// registerCodecs registers what the SFU passes through: Opus; VP8, VP9,
// H.264 and AV1 (with RTX), plus the audio level extension.
func registerCodecs(me *webrtc.MediaEngine) error {
	if err := me.RegisterDefaultCodecs(); err != nil {
		return err
	}
	return me.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: sdp.AudioLevelURI}, webrtc.RTPCodecTypeAudio)
}

// registerInterceptors registers the RTCP feedback types and header
// extensions the node negotiates (generic NACK and PLI for video, the
// simulcast extensions, transport-cc for audio and video, exactly as
// pion's ConfigureNack, ConfigureSimulcastExtensionHeaders and
// ConfigureTWCCSender register them) and returns the interceptors every
// peer connection runs besides its rtpfeedback.Interceptor: pion's
// sender-report interceptor. Receive-side feedback toward publishers
// (NACKs, receiver reports, TWCC feedback) is rtpfeedback's, for packets
// read through pion and through the node's own path alike; subscribers'
// NACKs are answered from the per-track caches (cache.go), not by pion's
// per-stream responder.
func registerInterceptors(me *webrtc.MediaEngine) ([]interceptor.Factory, error) {
	me.RegisterFeedback(webrtc.RTCPFeedback{Type: "nack"}, webrtc.RTPCodecTypeVideo)
	me.RegisterFeedback(webrtc.RTCPFeedback{Type: "nack", Parameter: "pli"}, webrtc.RTPCodecTypeVideo)
	if err := webrtc.ConfigureSimulcastExtensionHeaders(me); err != nil {
		return nil, err
	}
	for _, kind := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
		me.RegisterFeedback(webrtc.RTCPFeedback{Type: webrtc.TypeRTCPFBTransportCC}, kind)
		if err := me.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: sdp.TransportCCURI}, kind); err != nil {
			return nil, err
		}
	}
	sr, err := report.NewSenderInterceptor()
	if err != nil {
		return nil, err
	}
	return []interceptor.Factory{sr}, nil
}

// registry returns an interceptor registry of the node's base
// interceptors and feedback: the shared API's (a new
// rtpfeedback.Interceptor per peer connection) or one peer connection's.
// out, when not nil, comes first: it binds pion's RTCP writer, and every
// other RTCP writer of the chain writes through it (rtcpout.go).
func (s *Server) registry(out, feedback interceptor.Factory) *interceptor.Registry {
	ir := &interceptor.Registry{}
	if out != nil {
		ir.Add(out)
	}
	for _, f := range s.interceptors {
		ir.Add(f)
	}
	ir.Add(feedback)
	return ir
}

// corkable returns the batched writer a fan-out corks: the own data path's
// (which is the batched socket when both are on), else the batched socket,
// else nil.
func (s *Server) corkable() *batchconn.Conn {
	if s.out != nil {
		return s.out
	}
	return s.batch
}

// NodeID returns the node's bus name.
func (s *Server) NodeID() string { return s.cfg.NodeID }

// UDPAddr returns the bound media UDP address.
func (s *Server) UDPAddr() netip.AddrPort { return s.udp.LocalAddr().(*net.UDPAddr).AddrPort() }

// TCPAddr returns the bound ICE-TCP address (zero when disabled).
func (s *Server) TCPAddr() netip.AddrPort {
	if s.tcp == nil {
		return netip.AddrPort{}
	}
	return s.tcp.Addr().(*net.TCPAddr).AddrPort()
}

func (s *Server) publicAddr(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	if s.cfg.PublicIP.IsValid() {
		a = netip.AddrPortFrom(s.cfg.PublicIP, a.Port())
	}
	return a.String()
}

// Run serves the bus until ctx is done, announcing the node, then closes
// every session and the sockets.
func (s *Server) Run(ctx context.Context) error {
	defer s.Close()
	sub, err := s.bus.HandleRequests(s.cfg.NodeID, s.handle)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.sub = sub
	s.mu.Unlock()
	s.log.Info("sfu serving", "node", s.cfg.NodeID, "udp", s.UDPAddr(), "tcp", s.TCPAddr())
	if !s.cfg.NoSchedulerPoll {
		pctx, cancel := context.WithCancel(ctx)
		var pwg sync.WaitGroup
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			s.schedPoll(pctx)
		}()
		defer func() { cancel(); pwg.Wait() }()
	}
	if s.casc.ep != nil {
		cctx, cancel := context.WithCancel(ctx)
		var cwg sync.WaitGroup
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			if err := s.runCascade(cctx); err != nil {
				s.log.Error("sfu: cascade endpoint stopped", "err", err)
			}
		}()
		defer func() { cancel(); cwg.Wait() }()
	}
	t := time.NewTicker(s.cfg.AnnounceInterval)
	defer t.Stop()
	speakers := time.NewTicker(300 * time.Millisecond)
	defer speakers.Stop()
	layers := time.NewTicker(500 * time.Millisecond)
	defer layers.Stop()
	var reports <-chan time.Time
	if s.cfg.DataPath.own() {
		rt := time.NewTicker(srInterval)
		defer rt.Stop()
		reports = rt.C
	}
	var lastFwd uint64
	last := time.Now()
	s.announce(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.drain.empty:
			s.log.Info("sfu: drained, no session left: stopping", "node", s.cfg.NodeID)
			return nil
		case now := <-t.C:
			f := s.forwarded.Load()
			pps := float64(f-lastFwd) / now.Sub(last).Seconds()
			lastFwd, last = f, now
			s.announce(pps)
			s.expireGroup(now)
		case <-speakers.C:
			for _, r := range s.roomList() {
				r.updateSpeakers()
			}
		case <-layers.C:
			for _, r := range s.roomList() {
				r.updateLayers()
			}
		case now := <-reports:
			s.sendReports(now)
		}
	}
}

func (s *Server) roomList() []*room {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Values(s.rooms))
}

func (s *Server) announce(pps float64) {
	s.mu.Lock()
	load := bus.NodeLoad{Peers: len(s.sessions), Rooms: len(s.rooms), PacketsPerSecond: pps}
	var rooms []string
	if len(s.rooms) <= bus.MaxAnnouncedRooms {
		rooms = make([]string, 0, len(s.rooms))
		for name := range s.rooms {
			rooms = append(rooms, name)
		}
	}
	s.mu.Unlock()
	err := s.bus.AnnounceNode(bus.NodeAnnounce{Node: s.cfg.NodeID, Region: s.cfg.Region,
		UDP: s.publicAddr(s.UDPAddr()), TCP: s.publicAddr(s.TCPAddr()), Load: load, Time: time.Now().UTC(),
		Draining: s.Draining(), Rooms: rooms, Relay: s.relayAddr(), RelayID: s.CascadeID(), Group: s.cfg.Group})
	if err != nil {
		s.log.Warn("sfu: announce", "err", err)
	}
}

// Close ends every session, stops serving the bus and closes the sockets.
// It is idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		sub := s.sub
		parts := slices.Collect(maps.Values(s.sessions))
		s.mu.Unlock()
		if sub != nil {
			sub.Unsubscribe()
		}
		s.drain.stop()
		for _, p := range parts {
			p.leave("node shutting down")
		}
		s.relayPeersLeave()
		s.closeGroup()
		s.wg.Wait()
		s.closeSockets()
	})
	return nil
}

func (s *Server) closeSockets() {
	if s.casc.ep != nil {
		_ = s.casc.ep.Close()
	}
	if s.tcpMux != nil {
		s.tcpMux.Close()
	}
	if s.tcp != nil {
		s.tcp.Close()
	}
	if s.udpMux != nil {
		s.udpMux.Close()
	}
	if s.batch != nil {
		s.batch.Close()
	}
	if s.out != nil {
		s.out.Close()
	}
	s.udp.Close()
}

// Sessions returns the number of live sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Forwarded returns how many RTP packets the node has sent to subscribers.
func (s *Server) Forwarded() uint64 { return s.forwarded.Load() }

func (s *Server) handle(ctx context.Context, req bus.Request) (bus.Reply, error) {
	if req.Type == bus.RequestDrain {
		period := time.Duration(0)
		if req.Drain != nil {
			period = time.Duration(req.Drain.PeriodMillis) * time.Millisecond
		}
		s.Drain(period)
		return bus.Reply{}, nil
	}
	if req.Type == bus.RequestJoin {
		if req.Join.ICE != nil {
			return s.joinGroup(ctx, req)
		}
		return s.join(ctx, req)
	}
	if req.Type == bus.RequestClaimed {
		return s.serveClaimed(req)
	}
	s.mu.Lock()
	p := s.sessions[req.Session]
	s.mu.Unlock()
	if p == nil {
		if pp := s.pending(req.Session); pp != nil {
			switch req.Type {
			case bus.RequestLeave:
				s.dropPending(req.Session)
				return bus.Reply{}, nil
			case bus.RequestCandidate:
				return bus.Reply{}, pp.addCandidate(req.Candidate)
			}
		}
		if req.Type == bus.RequestLeave {
			return bus.Reply{}, nil
		}
		return bus.Reply{}, bus.Errorf(bus.StatusNotFound, "no session %s on node %s", req.Session, s.cfg.NodeID)
	}
	switch req.Type {
	case bus.RequestOffer:
		return p.clientOffer(ctx, req.SDP)
	case bus.RequestAnswer:
		return p.clientAnswer(req.SDP)
	case bus.RequestCandidate:
		return bus.Reply{}, p.addCandidate(req.Candidate)
	case bus.RequestLeave:
		p.leave("")
		return bus.Reply{}, nil
	case bus.RequestLayer:
		return bus.Reply{}, p.setMaxLayer(req.Layer)
	case bus.RequestMute:
		return bus.Reply{}, p.setMuted(req.Mute)
	case bus.RequestStats:
		st := p.stats()
		return bus.Reply{Stats: &st}, nil
	}
	return bus.Reply{}, bus.Errorf(bus.StatusBadRequest, "unknown request %q", req.Type)
}

// sendsMedia reports whether an SDP offer has a media section the client
// sends on (sendrecv or sendonly audio or video).
func sendsMedia(offer string) (bool, error) {
	var d sdp.SessionDescription
	if err := d.UnmarshalString(offer); err != nil {
		return false, err
	}
	for _, m := range d.MediaDescriptions {
		if m.MediaName.Media != "audio" && m.MediaName.Media != "video" {
			continue
		}
		if m.MediaName.Port.Value == 0 {
			continue
		}
		dir := "sendrecv"
		for _, a := range m.Attributes {
			switch a.Key {
			case "sendrecv", "sendonly", "recvonly", "inactive":
				dir = a.Key
			}
		}
		if dir == "sendrecv" || dir == "sendonly" {
			return true, nil
		}
	}
	return false, nil
}

func (s *Server) join(ctx context.Context, req bus.Request) (bus.Reply, error) {
	j := req.Join
	sends, err := sendsMedia(j.Offer)
	if err != nil {
		s.m.badSDP.Inc()
		return bus.Reply{}, bus.Errorf(bus.StatusBadRequest, "offer: %v", err)
	}
	if sends && !j.Publish {
		return bus.Reply{}, bus.Errorf(bus.StatusUnauthorized, "session %s may not publish", req.Session)
	}
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return bus.Reply{}, bus.Errorf(bus.StatusUnavailable, "node %s is stopping", s.cfg.NodeID)
	case s.Draining():
		s.mu.Unlock()
		return bus.Reply{}, bus.Errorf(bus.StatusUnavailable, "node %s is draining", s.cfg.NodeID)
	case s.sessions[req.Session] != nil:
		s.mu.Unlock()
		return bus.Reply{}, bus.Errorf(bus.StatusConflict, "session %s exists", req.Session)
	case len(s.sessions) >= s.cfg.MaxPeers:
		s.mu.Unlock()
		return bus.Reply{}, bus.Errorf(bus.StatusUnavailable, "node %s is full", s.cfg.NodeID)
	}
	r := s.rooms[j.Room]
	if r == nil {
		r = newRoom(s, j.Room)
		s.rooms[j.Room] = r
		s.attachRemotesLocked(r)
	}
	p := newParticipant(s, r, req.Session, j)
	s.sessions[req.Session] = p
	r.mu.Lock()
	r.parts[p.id] = p
	r.mu.Unlock()
	s.mu.Unlock()
	s.m.joins.Inc()

	answer, err := p.start(ctx, j.Offer)
	if err != nil {
		p.leave("")
		return bus.Reply{}, err
	}
	return bus.Reply{SDP: answer, After: p.joined}, nil
}

func (s *Server) removeSession(p *participant) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[p.id] == p {
		delete(s.sessions, p.id)
	}
	r := p.room
	r.mu.Lock()
	delete(r.parts, p.id)
	empty := len(r.parts) == 0 && len(r.clients) == 0
	r.mu.Unlock()
	if empty && s.rooms[r.name] == r {
		delete(s.rooms, r.name)
	}
	if len(s.sessions) == 0 {
		s.drain.lastLeft(s.cfg.DrainStay)
	}
}

func errStatus(s bus.Status, err error) error {
	var be *bus.Error
	if errors.As(err, &be) {
		return be
	}
	return &bus.Error{Status: s, Message: strings.TrimPrefix(err.Error(), "webrtc: ")}
}
