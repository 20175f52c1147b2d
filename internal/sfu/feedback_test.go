package sfu

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/report"
	"github.com/pion/logging"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/rtpfeedback/rtpfeedbacktest"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// feedbackProbe is a publisher-side pion interceptor: it drops one
// outgoing video packet (sequence number dropSeq, once) and keeps the
// RTCP the node sends back.
type feedbackProbe struct {
	interceptor.NoOp
	dropSeq uint16

	mu      sync.Mutex // guards everything below
	dropped uint32     // the SSRC whose packet was dropped, 0 before
	nacked  bool       // a NACK for the dropped packet arrived
	rr      map[uint32]rtcp.ReceptionReport
	twccRx  int // transport-wide packets reported received
	twccNo  int // and reported not received
	twccPkt int
	plis    int
	// srtpErrs are what the client's SRTP sessions logged: SRTCP that did
	// not decrypt (a replayed index, a bad tag) is logged and dropped.
	srtpErrs []string
}

// NewLogger implements logging.LoggerFactory: the srtp scope's messages
// of level info and above are kept in srtpErrs.
func (p *feedbackProbe) NewLogger(scope string) logging.LeveledLogger {
	l := logging.NewDefaultLoggerFactory().NewLogger(scope)
	if scope != "srtp" {
		return l
	}
	return srtpLog{LeveledLogger: l, p: p}
}

type srtpLog struct {
	logging.LeveledLogger
	p *feedbackProbe
}

func (l srtpLog) keep(msg string) {
	l.p.mu.Lock()
	l.p.srtpErrs = append(l.p.srtpErrs, msg)
	l.p.mu.Unlock()
}
func (l srtpLog) Info(msg string)              { l.keep(msg) }
func (l srtpLog) Infof(f string, args ...any)  { l.keep(fmt.Sprintf(f, args...)) }
func (l srtpLog) Warn(msg string)              { l.keep(msg) }
func (l srtpLog) Warnf(f string, args ...any)  { l.keep(fmt.Sprintf(f, args...)) }
func (l srtpLog) Error(msg string)             { l.keep(msg) }
func (l srtpLog) Errorf(f string, args ...any) { l.keep(fmt.Sprintf(f, args...)) }

func (p *feedbackProbe) NewInterceptor(string) (interceptor.Interceptor, error) { return p, nil }

func (p *feedbackProbe) BindLocalStream(info *interceptor.StreamInfo, w interceptor.RTPWriter) interceptor.RTPWriter {
	if !strings.HasPrefix(info.MimeType, "video/") {
		return w
	}
	return interceptor.RTPWriterFunc(func(h *rtp.Header, payload []byte, a interceptor.Attributes) (int, error) {
		p.mu.Lock()
		drop := p.dropped == 0 && h.SequenceNumber == p.dropSeq
		if drop {
			p.dropped = h.SSRC
		}
		p.mu.Unlock()
		if drop {
			return len(payload), nil
		}
		return w.Write(h, payload, a)
	})
}

func (p *feedbackProbe) BindRTCPReader(r interceptor.RTCPReader) interceptor.RTCPReader {
	return interceptor.RTCPReaderFunc(func(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
		n, a, err := r.Read(b, a)
		if err != nil {
			return n, a, err
		}
		pkts, perr := rtcp.Unmarshal(b[:n])
		if perr != nil {
			return n, a, nil
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, pkt := range pkts {
			switch pkt := pkt.(type) {
			case *rtcp.ReceiverReport:
				for _, rep := range pkt.Reports {
					p.rr[rep.SSRC] = rep
				}
			case *rtcp.TransportLayerNack:
				if pkt.MediaSSRC != p.dropped || p.dropped == 0 {
					continue
				}
				for _, pair := range pkt.Nacks {
					for _, s := range pair.PacketList() {
						if s == p.dropSeq {
							p.nacked = true
						}
					}
				}
			case *rtcp.PictureLossIndication:
				p.plis++
			case *rtcp.TransportLayerCC:
				p.twccPkt++
				for _, s := range rtpfeedbacktest.Statuses(pkt) {
					if s == rtcp.TypeTCCPacketNotReceived {
						p.twccNo++
					} else {
						p.twccRx++
					}
				}
			}
		}
		return n, a, nil
	})
}

// probeAPI is loadgen's client API plus the transport-cc header
// extension on outgoing packets (pion's TWCC header extension
// interceptor, as a browser sends them), sender reports and the probe,
// which also takes the client's srtp log.
func probeAPI(t *testing.T, p *feedbackProbe) *webrtc.API {
	t.Helper()
	me := &webrtc.MediaEngine{}
	if err := me.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	ir := &interceptor.Registry{}
	if err := webrtc.ConfigureTWCCHeaderExtensionSender(me, ir); err != nil {
		t.Fatal(err)
	}
	me.RegisterFeedback(webrtc.RTCPFeedback{Type: webrtc.TypeRTCPFBTransportCC}, webrtc.RTPCodecTypeVideo)
	me.RegisterFeedback(webrtc.RTCPFeedback{Type: webrtc.TypeRTCPFBTransportCC}, webrtc.RTPCodecTypeAudio)
	sr, err := report.NewSenderInterceptor()
	if err != nil {
		t.Fatal(err)
	}
	ir.Add(sr)
	ir.Add(p)
	se := loopbackSettingEngine()
	se.LoggerFactory = p
	return webrtc.NewAPI(webrtc.WithMediaEngine(me), webrtc.WithSettingEngine(se), webrtc.WithInterceptorRegistry(ir))
}

// dialProbe joins room as publisher "pub" with a feedbackProbe that drops
// video packet 40.
func (h *harness) dialProbe(room string) (*feedbackProbe, *loadgen.Client) {
	h.t.Helper()
	p := &feedbackProbe{dropSeq: 40, rr: map[uint32]rtcp.ReceptionReport{}}
	return p, h.dialWith(probeAPI(h.t, p), loadgen.ClientConfig{Room: room, Identity: "pub", Publish: true, VideoBitrate: 300_000})
}

// TestPublisherGetsFeedback: a pion publisher through the node receives
// receiver reports for its audio and video (with the LSR of its own
// sender reports, which the node reads), TWCC feedback that reports its
// packets received, and a NACK for the one video packet it did not send;
// on the own data path, the peer connection's rtpfeedback instance is the one
// that saw them.
func TestPublisherGetsFeedback(t *testing.T) {
	for _, path := range []DataPath{DataPathPion, DataPathOwn} {
		own := path == DataPathOwn
		t.Run(path.String(), func(t *testing.T) {
			if own {
				requireOwnPath(t)
			}
			h := newHarness(t, Config{DataPath: path})
			p, c := h.dialProbe("fb")
			var ssrcs []uint32
			for _, s := range c.PC().GetSenders() {
				if s.Track() != nil {
					ssrcs = append(ssrcs, uint32(s.GetParameters().Encodings[0].SSRC))
				}
			}
			if len(ssrcs) != 2 {
				t.Fatalf("%d sending SSRCs, want 2", len(ssrcs))
			}
			testkit.WaitFor(t, 15*time.Second, "RRs for both streams, TWCC feedback and the NACK", func() bool {
				p.mu.Lock()
				defer p.mu.Unlock()
				_, a := p.rr[ssrcs[0]]
				_, b := p.rr[ssrcs[1]]
				return a && b && p.nacked && p.twccRx > 200 &&
					p.rr[ssrcs[0]].LastSenderReport != 0 && p.rr[ssrcs[1]].LastSenderReport != 0
			})
			p.mu.Lock()
			defer p.mu.Unlock()
			if rep := p.rr[p.dropped]; rep.TotalLost < 1 || rep.LastSequenceNumber < uint32(p.dropSeq) {
				t.Errorf("video report %+v: the dropped packet is not counted lost", rep)
			}
			// Only the dropped packet (and whatever loopback lost) may be
			// reported missing: a browser's bandwidth estimate collapses
			// on feedback that reports its packets lost.
			if p.twccNo > 1+p.twccRx/50 {
				t.Errorf("TWCC feedback: %d received, %d not received", p.twccRx, p.twccNo)
			}
			if len(p.srtpErrs) > 0 {
				t.Errorf("the client's SRTP sessions refused packets: %q", p.srtpErrs)
			}
			if n := h.s.feedback.Stats(); n.NACKs == 0 || n.Reports == 0 || n.TWCC == 0 || n.SenderReport == 0 {
				t.Errorf("node feedback counters %+v", n)
			}
			if own {
				h.s.mu.Lock()
				var st []uint64
				for _, part := range h.s.sessions {
					if part.own != nil && part.own.feedback != nil {
						s := part.own.feedback.Stats()
						st = append(st, s.Packets, s.NACKs, s.Reports, s.TWCC)
					}
				}
				h.s.mu.Unlock()
				if len(st) != 4 || st[0] == 0 || st[1] == 0 || st[2] == 0 || st[3] == 0 {
					t.Errorf("own data path feedback stats (packets, NACKs, RRs, TWCC) %v", st)
				}
			}
			if own {
				// The feedback came from packets the own receive path took
				// (it took all but the first few; the dropped packet's
				// neighbours among them).
				taken, viaPion := testutilCounter(h.s.m.recvTaken), h.s.pionReceived.Load()
				if taken < 100 || taken < 10*float64(viaPion) {
					t.Errorf("own receive path took %v packets, pion's %d", taken, viaPion)
				}
			}
			if ownN, viaPion := h.s.OwnRTCPPackets(); own && (ownN == 0 || viaPion != 0) {
				// The sender reports behind the LSRs came the own way.
				t.Errorf("own RTCP path took %d packets, pion's readers got %d", ownN, viaPion)
			}
		})
	}
}
