package p2plab

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"time"

	"github.com/traverse-rtc/traverse/client/p2p"
)

// UpgradeRun is one run of the upgrade test.
type UpgradeRun struct {
	OK bool
	// Upgrade is the time from the direct path opening to the caller's
	// flow moving onto it.
	Upgrade time.Duration
	// Sent by the caller; Received, Lost (never arrived) and Reordered
	// (arrived after a later one) at the callee.
	Sent, Received, Lost, Reordered int
	// From is the caller's path before the upgrade (TURN, or a relay
	// node when the Env runs some).
	From p2p.PathKind
	Err  error
}

// Upgrade blocks UDP between a host of kind a and one of kind b (on a's
// link, nftables), connects them (through TURN), streams datagrams from a
// to b every interval, opens the direct path after hold, and measures how
// long the flow takes to move onto it and what the callee got.
func (e *Env) Upgrade(ctx context.Context, a, b string, interval, hold time.Duration, extra ...p2p.Option) UpgradeRun {
	ha, hb, err := e.pair(a, b)
	if err != nil {
		return UpgradeRun{Err: err}
	}
	if err := ha.host.BlockUDP(hb.public); err != nil {
		return UpgradeRun{Err: err}
	}
	defer ha.host.UnblockUDP()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	extra = append([]p2p.Option{p2p.WithDirectTimeout(500 * time.Millisecond)}, extra...)
	ca, cb, closePair, err := e.connectPair(ctx, a, b, ha, hb, extra)
	if err != nil {
		return UpgradeRun{Err: err}
	}
	defer closePair()
	from := ca.Path().Kind
	if from == p2p.PathDirect {
		return UpgradeRun{Err: fmt.Errorf("direct although blocked")}
	}

	var mu sync.Mutex // guards got
	var got []uint32
	rctx, stopRecv := context.WithCancel(ctx)
	defer stopRecv()
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			p, err := cb.ReadDatagram(rctx)
			if err != nil {
				return
			}
			mu.Lock()
			got = append(got, binary.BigEndian.Uint32(p))
			mu.Unlock()
		}
	}()
	tk := time.NewTicker(interval)
	defer tk.Stop()
	var sent uint32
	var opened, upgraded time.Time
	start := time.Now()
	for ctx.Err() == nil {
		<-tk.C
		now := time.Now()
		if opened.IsZero() && now.Sub(start) >= hold {
			// Taken before the rule goes: an upgrade can land while
			// UnblockUDP is still returning.
			opened = time.Now()
			if err := ha.host.UnblockUDP(); err != nil {
				return UpgradeRun{Err: err}
			}
		}
		if ca.WriteDatagram(binary.BigEndian.AppendUint32(nil, sent)) == nil {
			sent++
		}
		if !opened.IsZero() && upgraded.IsZero() {
			for _, ch := range ca.PathChanges() {
				if ch.To.Kind == p2p.PathDirect && ch.At.After(opened) {
					upgraded = ch.At
				}
			}
			if upgraded.IsZero() && now.Sub(opened) > 10*time.Second {
				break
			}
		}
		if !upgraded.IsZero() && now.Sub(upgraded) > hold {
			break
		}
	}
	// Wait for the stragglers, then count.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= int(sent) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopRecv()
	<-recvDone
	r := UpgradeRun{Sent: int(sent), Received: len(got), From: from}
	seen := map[uint32]bool{}
	var last int64 = -1
	for _, s := range got {
		if int64(s) < last {
			r.Reordered++
		}
		last = max(last, int64(s))
		seen[s] = true
	}
	for i := uint32(0); i < sent; i++ {
		if !seen[i] {
			r.Lost++
		}
	}
	if upgraded.IsZero() {
		r.Err = fmt.Errorf("no upgrade within 10s of opening: caller %+v pairs %+v; callee %+v pairs %+v",
			ca.Stats(), ca.Pairs(), cb.Stats(), cb.Pairs())
		return r
	}
	r.Upgrade = upgraded.Sub(opened)
	r.OK = true
	return r
}
