package p2plab

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/logging"
	"github.com/pion/stun/v4"
	"github.com/pion/transport/v4"
	"github.com/pion/transport/v4/stdnet"

	"github.com/traverse-rtc/traverse/client/p2p"
	"github.com/traverse-rtc/traverse/internal/netlab"
)

// The side-by-side: pion/ice (the ICE agent of pion/webrtc) between the
// same hosts with the same STUN and TURN servers, measured the same way.

// nsNet is pion's transport.Net with its sockets opened in a lab host's
// namespace (interfaces are read there once, at creation).
type nsNet struct {
	*stdnet.Net
	h *netlab.Host
}

func newNSNet(h *netlab.Host) (*nsNet, error) {
	var n *stdnet.Net
	err := h.Do(func() error {
		var err error
		n, err = stdnet.NewNet()
		return err
	})
	return &nsNet{Net: n, h: h}, err
}

func (n *nsNet) ListenPacket(network, address string) (pc net.PacketConn, err error) {
	derr := n.h.Do(func() error { pc, err = n.Net.ListenPacket(network, address); return nil })
	return pc, firstErr(err, derr)
}

func (n *nsNet) ListenUDP(network string, laddr *net.UDPAddr) (c transport.UDPConn, err error) {
	derr := n.h.Do(func() error { c, err = n.Net.ListenUDP(network, laddr); return nil })
	return c, firstErr(err, derr)
}

func (n *nsNet) ListenTCP(network string, laddr *net.TCPAddr) (l transport.TCPListener, err error) {
	derr := n.h.Do(func() error { l, err = n.Net.ListenTCP(network, laddr); return nil })
	return l, firstErr(err, derr)
}

func (n *nsNet) Dial(network, address string) (c net.Conn, err error) {
	derr := n.h.Do(func() error { c, err = n.Net.Dial(network, address); return nil })
	return c, firstErr(err, derr)
}

func (n *nsNet) DialUDP(network string, laddr, raddr *net.UDPAddr) (c transport.UDPConn, err error) {
	derr := n.h.Do(func() error { c, err = n.Net.DialUDP(network, laddr, raddr); return nil })
	return c, firstErr(err, derr)
}

func (n *nsNet) DialTCP(network string, laddr, raddr *net.TCPAddr) (c transport.TCPConn, err error) {
	derr := n.h.Do(func() error { c, err = n.Net.DialTCP(network, laddr, raddr); return nil })
	return c, firstErr(err, derr)
}

func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func (e *Env) iceAgent(h *netlab.Host) (*ice.Agent, error) {
	nw, err := newNSNet(h)
	if err != nil {
		return nil, err
	}
	a := e.srv.Addrs()[0]
	var urls []*stun.URI
	for _, u := range []string{
		fmt.Sprintf("stun:%s:%d", a, stunPort),
		fmt.Sprintf("turn:%s:%d?transport=udp", a, turnPort),
		fmt.Sprintf("turn:%s:%d?transport=tcp", a, turnPort),
	} {
		uri, err := stun.ParseURI(u)
		if err != nil {
			return nil, err
		}
		if uri.Scheme == stun.SchemeTypeTURN {
			uri.Username, uri.Password = turnUser, turnPass
		}
		urls = append(urls, uri)
	}
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelDisabled
	return ice.NewAgent(&ice.AgentConfig{
		Urls:           urls,
		NetworkTypes:   []ice.NetworkType{ice.NetworkTypeUDP4, ice.NetworkTypeTCP4},
		CandidateTypes: []ice.CandidateType{ice.CandidateTypeHost, ice.CandidateTypeServerReflexive, ice.CandidateTypeRelay},
		Net:            nw,
		LoggerFactory:  lf,
	})
}

// ConnectICE is Connect with two pion/ice agents (trickle ICE over an
// in-process channel, the caller controlling).
func (e *Env) ConnectICE(ctx context.Context, a, b string, timeout time.Duration) Run {
	ha, hb, err := e.pair(a, b)
	if err != nil {
		return Run{Err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	aa, err := e.iceAgent(ha.host)
	if err != nil {
		return Run{Err: err}
	}
	defer aa.Close()
	ab, err := e.iceAgent(hb.host)
	if err != nil {
		return Run{Err: err}
	}
	defer ab.Close()
	trickle := func(from, to *ice.Agent) error {
		return from.OnCandidate(func(c ice.Candidate) {
			if c == nil {
				return
			}
			rc, err := ice.UnmarshalCandidate(c.Marshal())
			if err == nil {
				_ = to.AddRemoteCandidate(rc)
			}
		})
	}
	if err := trickle(aa, ab); err != nil {
		return Run{Err: err}
	}
	if err := trickle(ab, aa); err != nil {
		return Run{Err: err}
	}
	ufA, pwA, _ := aa.GetLocalUserCredentials()
	ufB, pwB, _ := ab.GetLocalUserCredentials()
	if err := aa.GatherCandidates(); err != nil {
		return Run{Err: err}
	}
	if err := ab.GatherCandidates(); err != nil {
		return Run{Err: err}
	}
	var cb *ice.Conn
	var berr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); cb, berr = ab.Accept(ctx, ufA, pwA) }()
	ca, err := aa.Dial(ctx, ufB, pwB)
	wg.Wait()
	if err != nil || berr != nil {
		return Run{Err: fmt.Errorf("ice: %v / %v", err, berr)}
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for i := uint32(0); sctx.Err() == nil; i++ {
			_, _ = ca.Write(binary.BigEndian.AppendUint32(nil, i))
			select {
			case <-sctx.Done():
			case <-tk.C:
			}
		}
	}()
	defer wg.Wait()
	defer stop()
	buf := make([]byte, 1500)
	_ = cb.SetReadDeadline(time.Now().Add(time.Until(deadlineOf(ctx))))
	if _, err := cb.Read(buf); err != nil {
		return Run{Err: fmt.Errorf("ice media: %w", err)}
	}
	first := time.Since(start)
	// The caller's selected pair; a relayed end's transport is known only
	// to the agent that allocated it (candidates in SDP lose it), so each
	// agent's local end is asked.
	path := p2p.PathDirect
	for _, ag := range []*ice.Agent{aa, ab} {
		pair, err := ag.GetSelectedCandidatePair()
		if err != nil || pair == nil {
			continue
		}
		if pair.Remote.Type() == ice.CandidateTypeRelay && path == p2p.PathDirect {
			path = p2p.PathTURNUDP
		}
		if c := pair.Local; c.Type() == ice.CandidateTypeRelay {
			k := p2p.PathTURNUDP
			if r, ok := c.(interface{ RelayProtocol() string }); ok && r.RelayProtocol() == "tcp" {
				k = p2p.PathTURNTCP
			}
			path = max(path, k)
		}
	}
	return Run{OK: true, Path: path, FirstMedia: first}
}

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// MatrixICE is Matrix with pion/ice.
func (e *Env) MatrixICE(ctx context.Context, kinds []string, runs int, log func(a, b string, i int, r Run)) []Result {
	var out []Result
	for _, a := range kinds {
		for _, b := range kinds {
			r := Result{A: a, B: b, Expect: Expect(a, b)}
			for i := 0; i < runs && ctx.Err() == nil; i++ {
				x := e.ConnectICE(ctx, a, b, 30*time.Second)
				r.Runs = append(r.Runs, x)
				if log != nil {
					log(a, b, i, x)
				}
			}
			out = append(out, r)
		}
	}
	return out
}
