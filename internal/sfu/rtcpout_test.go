package sfu

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/srtp/v3"

	"github.com/traverse-rtc/traverse/internal/loadgen"
	"github.com/traverse-rtc/traverse/internal/rtpfeedback"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestOwnRTCPSend: with the own RTCP send the node seals its RTCP to
// own-path clients itself (traverse_sfu_fast_rtcp_sent_total), and the
// clients' pion stacks accept every packet of it: a publisher reads
// exactly as many TWCC feedback packets and PLIs as the node sent it
// (a replayed SRTCP index would be dropped and logged), none refused,
// receiver reports with the LSR of its sender reports; the subscriber's
// sender reports go the same way.
func TestOwnRTCPSend(t *testing.T) {
	requireOwnPath(t)
	h := newHarness(t, Config{})
	p, _ := h.dialProbe("rtcp")
	sub := h.dial(loadgen.ClientConfig{Room: "rtcp", Identity: "sub", Subscribe: true})
	testkit.WaitFor(t, 15*time.Second, "the subscriber to get audio and video", func() bool { return sub.Receives(1, 1, 50) })

	var fb *rtpfeedback.Interceptor
	h.s.mu.Lock()
	for _, part := range h.s.sessions {
		if part.identity == "pub" && part.own != nil && part.own.active.Load() {
			fb = part.own.feedback
		}
	}
	h.s.mu.Unlock()
	if fb == nil {
		t.Fatal("the publisher's session is not on the own data path")
	}
	// The client's count is read first: the node's can only be ahead.
	testkit.WaitFor(t, 15*time.Second, "the publisher to have read every TWCC feedback packet and PLI the node sent it", func() bool {
		p.mu.Lock()
		twcc, plis, lsr := p.twccPkt, p.plis, len(p.rr) == 2
		for _, rep := range p.rr {
			lsr = lsr && rep.LastSenderReport != 0
		}
		p.mu.Unlock()
		sent, pli := fb.Stats().TWCC, testutilCounter(h.s.m.pliForwarded)
		return sent >= 30 && twcc == int(sent) && pli >= 1 && float64(plis) == pli && lsr
	})
	p.mu.Lock()
	if len(p.srtpErrs) > 0 {
		t.Errorf("the publisher's SRTP sessions refused packets: %q", p.srtpErrs)
	}
	p.mu.Unlock()
	testkit.WaitFor(t, 5*time.Second, "sender reports to the subscriber", func() bool { return testutilCounter(h.s.m.ownReports) >= 2 })
	sent := testutilCounter(h.s.m.ownRTCPSent)
	var errs float64
	for _, r := range rtcpErrorReasons {
		errs += testutilCounter(h.s.m.ownRTCPErrors.WithLabelValues(r))
	}
	if sent < 30 || errs != 0 || fb.Stats().WriteErrors != 0 {
		t.Errorf("own RTCP: %v datagrams sent, %v errors, feedback write errors %d", sent, errs, fb.Stats().WriteErrors)
	}
}

// pionWriter stands for the writer pion binds (its SRTCP session).
type pionWriter struct{ pkts []rtcp.Packet }

func (w *pionWriter) Write(pkts []rtcp.Packet, _ interceptor.Attributes) (int, error) {
	w.pkts = append(w.pkts, pkts...)
	return 0, nil
}

// TestRTCPOut: a session's RTCP goes to pion's writer until the own
// context is enabled, then never again: it is sealed so that a receiver
// with the session's keys opens every packet in order (a repeated SRTCP
// index would be refused as a replay), whether written as packets or
// marshalled; pion's sender reports are dropped, the node's sent; without
// a UDP pair it is dropped and counted; what would not fit a datagram is
// refused.
// One fixture is walked through the cases in order, each starting from the
// state (sequence numbers, replay window, counters) the last one left, which
// is part of what is tested: hence its length.
func TestRTCPOut(t *testing.T) {
	for _, prof := range []srtp.ProtectionProfile{srtp.ProtectionProfileAeadAes128Gcm, srtp.ProtectionProfileAes128CmHmacSha1_80} {
		t.Run(prof.String(), func(t *testing.T) {
			d, _, rc, _ := newOwnTestDown(t, prof)
			f := d.sub.own
			// The receiver refuses a repeated index, as pion's SRTCP
			// session in a browser-like client does.
			dec, err := srtp.CreateContext(f.key, f.salt, f.profile, srtp.SRTCPReplayProtection(64))
			if err != nil {
				t.Fatal(err)
			}
			o := &rtcpOut{f: f}
			ic, _ := o.NewInterceptor("")
			pion := &pionWriter{}
			if w := ic.BindRTCPWriter(pion); w != o {
				t.Fatal("the chain must write through the session's rtcpOut")
			}
			pkts := []rtcp.Packet{&rtcp.ReceiverReport{SSRC: 7, Reports: []rtcp.ReceptionReport{{SSRC: 9, LastSenderReport: 5}}},
				&rtcp.PictureLossIndication{SenderSSRC: 7, MediaSSRC: 9}}
			raw, err := rtcp.Marshal(pkts)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := o.Write(pkts, nil); err != nil || len(pion.pkts) != 2 {
				t.Fatalf("before the own context: %v, pion got %d packets", err, len(pion.pkts))
			}
			if taken, _ := o.WriteCompound(raw); taken {
				t.Fatal("a compound write taken before the own context")
			}
			own, err := srtp.CreateContext(f.key, f.salt, f.profile)
			if err != nil {
				t.Fatal(err)
			}
			o.enable(own)
			buf := make([]byte, 1500)
			open := func() []byte {
				t.Helper()
				_ = rc.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, _, err := rc.ReadFromUDP(buf)
				if err != nil {
					t.Fatal(err)
				}
				got, err := dec.DecryptRTCP(nil, buf[:n], nil)
				if err != nil {
					t.Fatal(err)
				}
				return got
			}
			for i := range 6 {
				if i%2 == 0 {
					_, err = o.Write(pkts, nil)
				} else {
					var taken bool
					taken, err = o.WriteCompound(raw)
					if !taken {
						t.Fatal("compound write not taken")
					}
				}
				if err != nil {
					t.Fatal(err)
				}
				if got := open(); !bytes.Equal(got, raw) {
					t.Fatalf("packet %d: %x, want %x", i, got, raw)
				}
			}
			// pion's sender reports (the chain's Write) are dropped now;
			// the node's own (send) go out.
			sr := &rtcp.SenderReport{SSRC: 9, PacketCount: 3}
			if _, err := o.Write([]rtcp.Packet{sr}, nil); err != nil {
				t.Fatal(err)
			}
			if err := o.send([]rtcp.Packet{sr, pkts[1]}); err != nil {
				t.Fatal(err)
			}
			want, _ := rtcp.Marshal([]rtcp.Packet{sr, pkts[1]})
			if got := open(); !bytes.Equal(got, want) {
				t.Fatalf("the node's sender report: %x, want %x", got, want)
			}
			if len(pion.pkts) != 2 {
				t.Errorf("pion's writer got %d packets after the own context took over", len(pion.pkts))
			}
			if n := testutilCounter(f.s.m.ownRTCPSent); n != 7 {
				t.Errorf("%v sent, want 7", n)
			}
			if _, err := o.WriteCompound(make([]byte, ownMTU)); err == nil {
				t.Error("a compound packet too long for a datagram was sent")
			}
			var none netip.AddrPort
			f.remote.Store(&none)
			if _, err := o.Write(pkts, nil); !errors.Is(err, errNoUDPPair) {
				t.Errorf("no UDP pair: %v", err)
			}
			if n := testutilCounter(f.s.m.ownRTCPErrors.WithLabelValues("no-udp")); n != 1 || len(pion.pkts) != 2 {
				t.Errorf("no UDP pair: %v counted, pion got %d packets", n, len(pion.pkts))
			}
		})
	}
}

// BenchmarkRTCPOut is the own RTCP send of one tick's compound packet of
// a publisher's feedback (a receiver report with two blocks and a
// transport-cc feedback of 30 packets, marshalled by rtpfeedback): seal
// and send on the node's socket.
func BenchmarkRTCPOut(b *testing.B) {
	for _, prof := range []srtp.ProtectionProfile{srtp.ProtectionProfileAeadAes128Gcm, srtp.ProtectionProfileAes128CmHmacSha1_80} {
		b.Run(prof.String(), func(b *testing.B) {
			d, _, _, _ := newOwnTestDown(b, prof)
			f := d.sub.own
			o := &rtcpOut{f: f}
			ctx, err := srtp.CreateContext(f.key, f.salt, f.profile)
			if err != nil {
				b.Fatal(err)
			}
			o.enable(ctx)
			raw, err := rtcp.Marshal([]rtcp.Packet{
				&rtcp.ReceiverReport{SSRC: 7, Reports: []rtcp.ReceptionReport{{SSRC: 9}, {SSRC: 10}}},
				&rtcp.TransportLayerCC{SenderSSRC: 7, MediaSSRC: 9, PacketStatusCount: 30,
					PacketChunks: []rtcp.PacketStatusChunk{&rtcp.RunLengthChunk{PacketStatusSymbol: rtcp.TypeTCCPacketReceivedSmallDelta, RunLength: 30}},
					RecvDeltas:   make([]*rtcp.RecvDelta, 0)},
			})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := o.WriteCompound(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
