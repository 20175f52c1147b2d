package p2plab

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/traverse-rtc/traverse/client/p2p"
)

// Run is one connection attempt between a host of kind A (the caller)
// and one of kind B.
type Run struct {
	OK bool
	// Path is the caller's path when the first media packet arrived.
	Path p2p.PathKind
	// FirstMedia is the time from both peers starting until the callee
	// got the caller's first media packet.
	FirstMedia time.Duration
	// Candidate is the kind of the callee's candidate the caller's path
	// goes to ("mapped": a port mapping on the callee's router).
	Candidate string
	// TURN: either side allocated on the TURN server.
	TURN bool
	// RelayNodeUsed is the 1-based position, in signal's offer, of the
	// relay node that carried the call (0: none).
	RelayNodeUsed int
	Err           error
}

// pair finds the built hosts of kinds a (caller's side) and b.
func (e *Env) pair(a, b string) (ha, hb *side, err error) {
	ha, hb = e.hosts["a/"+a], e.hosts["b/"+b]
	if ha == nil || hb == nil {
		return nil, nil, fmt.Errorf("p2plab: kinds %s/%s not built", a, b)
	}
	return ha, hb, nil
}

// connectPair connects the caller ha (kind a) and the callee hb (kind b)
// at once, as two peers do, signaling over a pipe; closePair closes both.
// When either fails, a side that connected is closed.
func (e *Env) connectPair(ctx context.Context, a, b string, ha, hb *side, extra []p2p.Option) (ca, cb *p2p.Conn, closePair func(), err error) {
	sa, sb := p2p.Pipe("a-"+a, "b-"+b)
	type res struct {
		c   *p2p.Conn
		err error
	}
	done := make(chan res, 1)
	go func() {
		c, err := p2p.Connect(ctx, sb, e.options(hb.host, append(e.extraOptions(hb), extra...))...)
		done <- res{c, err}
	}()
	ca, errA := p2p.Connect(ctx, sa, e.options(ha.host, append(e.extraOptions(ha), extra...))...)
	rb := <-done
	cb = rb.c
	closePair = func() {
		if cb != nil {
			cb.Close()
		}
		if ca != nil {
			ca.Close()
		}
	}
	if errA != nil || rb.err != nil {
		closePair()
		return nil, nil, nil, fmt.Errorf("connect: %v / %v", errA, rb.err)
	}
	return ca, cb, closePair, nil
}

// Connect connects a host of kind a with one of kind b and sends media
// both ways until each side has received some (or timeout).
func (e *Env) Connect(ctx context.Context, a, b string, timeout time.Duration, extra ...p2p.Option) Run {
	ha, hb, err := e.pair(a, b)
	if err != nil {
		return Run{Err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	ca, cb, closePair, err := e.connectPair(ctx, a, b, ha, hb, extra)
	if err != nil {
		return Run{Err: err}
	}
	defer closePair()
	var wg sync.WaitGroup
	var first time.Duration
	var path p2p.PathKind
	var gotA, gotB bool
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	for _, c := range []*p2p.Conn{ca, cb} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk := time.NewTicker(5 * time.Millisecond)
			defer tk.Stop()
			for i := uint32(0); ; i++ {
				_ = c.WriteDatagram(binary.BigEndian.AppendUint32(nil, i))
				select {
				case <-sctx.Done():
					return
				case <-tk.C:
				}
			}
		}()
	}
	var cand string
	if _, err := cb.ReadDatagram(ctx); err == nil {
		p := ca.Path()
		first, path, cand, gotB = time.Since(start), p.Kind, p.Candidate, true
	}
	if _, err := ca.ReadDatagram(ctx); err == nil {
		gotA = true
	}
	stop()
	wg.Wait()
	if !gotA || !gotB {
		return Run{Err: fmt.Errorf("media: caller received %t, callee %t: %v", gotA, gotB, ctx.Err())}
	}
	turn := false
	for _, c := range []*p2p.Conn{ca, cb} {
		for _, p := range c.Pairs() {
			turn = turn || p.Kind >= p2p.PathTURNUDP
		}
	}
	_, used := ca.RelayNodeStats()
	return Run{OK: true, Path: path, FirstMedia: first, Candidate: cand, TURN: turn, RelayNodeUsed: used}
}

// Result sums the runs of one ordered pair.
type Result struct {
	A, B   string
	Runs   []Run
	Expect p2p.PathKind
}

// OK counts the successful runs.
func (r Result) OK() int {
	n := 0
	for _, x := range r.Runs {
		if x.OK {
			n++
		}
	}
	return n
}

// Paths names the paths chosen, most frequent first ("direct", "turn-udp 2/3").
func (r Result) Paths() string {
	count := map[p2p.PathKind]int{}
	for _, x := range r.Runs {
		if x.OK {
			count[x.Path]++
		}
	}
	var ks []p2p.PathKind
	for k := range count {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return count[ks[i]] > count[ks[j]] })
	s := ""
	for i, k := range ks {
		if i > 0 {
			s += ","
		}
		s += k.String()
		if count[k] != r.OK() {
			s += fmt.Sprintf(" %d/%d", count[k], r.OK())
		}
	}
	if s == "" {
		return "-"
	}
	return s
}

// Percentile returns the q-quantile (0..1) of the successful runs' time
// to first media (nearest rank).
func (r Result) Percentile(q float64) time.Duration {
	var ds []time.Duration
	for _, x := range r.Runs {
		if x.OK {
			ds = append(ds, x.FirstMedia)
		}
	}
	return Quantile(ds, q)
}

// Quantile is the nearest-rank q-quantile of ds.
func Quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// AsExpected reports whether every run succeeded on the expected path or
// a better one (two sequential symmetric NATs sometimes meet on predicted
// ports).
func (r Result) AsExpected() bool {
	for _, x := range r.Runs {
		if !x.OK || x.Path == p2p.PathNone || x.Path > r.Expect {
			return false
		}
	}
	return len(r.Runs) > 0
}

// Matrix runs every ordered pair of kinds runs times; progress (one line
// per run) goes to log when not nil.
func (e *Env) Matrix(ctx context.Context, kinds []string, runs int, log io.Writer, extra ...p2p.Option) []Result {
	var out []Result
	for _, a := range kinds {
		for _, b := range kinds {
			r := Result{A: a, B: b, Expect: e.expect(a, b)}
			for i := 0; i < runs && ctx.Err() == nil; i++ {
				x := e.Connect(ctx, a, b, 20*time.Second, extra...)
				r.Runs = append(r.Runs, x)
				if log != nil {
					if x.OK {
						fmt.Fprintf(log, "%s -> %s run %d: %s, first media %s\n", a, b, i+1, x.Path, x.FirstMedia.Round(time.Millisecond))
					} else {
						fmt.Fprintf(log, "%s -> %s run %d: failed: %v\n", a, b, i+1, x.Err)
					}
				}
			}
			out = append(out, r)
		}
	}
	return out
}

// Table prints results as a table.
func Table(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CALLER\tCALLEE\tPATH\tEXPECTED\tFIRST MEDIA p50\tp95\tSUCCESS")
	for _, r := range results {
		mark := ""
		if !r.AsExpected() {
			mark = " !"
		}
		paths := r.Paths()
		mapped := 0
		for _, x := range r.Runs {
			if x.OK && x.Candidate == "mapped" {
				mapped++
			}
		}
		if mapped > 0 {
			paths += fmt.Sprintf(" (mapped %d/%d)", mapped, r.OK())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s%s\t%s\t%s\t%d/%d\n", r.A, r.B, paths, r.Expect, mark,
			r.Percentile(0.5).Round(time.Millisecond), r.Percentile(0.95).Round(time.Millisecond), r.OK(), len(r.Runs))
	}
	return tw.Flush()
}

// Compare prints traverse's and pion/ice's results side by side with a
// summary: median time to first media over all runs, pairs that went
// direct, pairs that always connected.
func Compare(w io.Writer, ours, theirs []Result) error {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CALLER\tCALLEE\tTRAVERSE PATH\tp50\tOK\tPION/ICE PATH\tp50\tOK")
	sum := func(rs []Result) (all []time.Duration, direct, connected int) {
		for _, r := range rs {
			for _, x := range r.Runs {
				if x.OK {
					all = append(all, x.FirstMedia)
				}
			}
			if r.OK() == len(r.Runs) && len(r.Runs) > 0 {
				connected++
				if r.Paths() == p2p.PathDirect.String() {
					direct++
				}
			}
		}
		return all, direct, connected
	}
	for i, r := range ours {
		if i >= len(theirs) {
			break
		}
		t := theirs[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%d/%d\n", r.A, r.B, r.Paths(), r.Percentile(0.5).Round(time.Millisecond),
			r.OK(), len(r.Runs), t.Paths(), t.Percentile(0.5).Round(time.Millisecond), t.OK(), len(t.Runs))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	oa, od, oc := sum(ours)
	ta, td, tc := sum(theirs)
	_, err := fmt.Fprintf(w, "\ntraverse: first media p50 %s p95 %s, %d pairs always direct, %d/%d pairs always connected\n"+
		"pion/ice: first media p50 %s p95 %s, %d pairs always direct, %d/%d pairs always connected\n",
		Quantile(oa, 0.5).Round(time.Millisecond), Quantile(oa, 0.95).Round(time.Millisecond), od, oc, len(ours),
		Quantile(ta, 0.5).Round(time.Millisecond), Quantile(ta, 0.95).Round(time.Millisecond), td, tc, len(theirs))
	return err
}
