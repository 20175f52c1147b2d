package recovery

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestParityFor: the least m whose Residual meets the target, within the
// overhead cap.
func TestParityFor(t *testing.T) {
	for _, c := range []struct {
		k           int
		loss        float64
		target, cap float64
		want        int
	}{
		{16, 0, 0.01, 0.5, 0},
		{16, 0.01, 0.01, 0.5, 0}, // the loss alone meets the target: NACKs only
		{16, 0.02, 0.01, 0.5, 1},
		{16, 0.05, 0.01, 0.5, 3},
		{16, 0.10, 0.01, 0.5, 5}, // 31 %; the per-group rule took 6
		{16, 0.10, 0.02, 0.5, 4},
		{16, 0.20, 0.01, 0.5, 8}, // capped
		{16, 0.20, 0.01, 1, 9},
		{16, 1, 0.01, 0.5, 8},
		{10, 0.10, 0.01, 0.5, 4},
		{5, 0.10, 0.01, 0.5, 2},  // the cap: Residual 1.1 %
		{1, 0.10, 0.01, 0.5, 0},  // the cap rounds down to none
		{1, 0.10, 0.01, 1, 1},    // a copy: Residual 1 %
		{32, 0.10, 0.01, 0.5, 7}, // larger groups, less parity per message (22 %)
		{0, 0.10, 0.01, 0.5, 0},
	} {
		got := ParityFor(c.k, c.loss, c.target, c.cap)
		if got != c.want {
			t.Errorf("k=%d loss %.2f target %.2f cap %.1f: m=%d want %d", c.k, c.loss, c.target, c.cap, got, c.want)
			continue
		}
		if got < int(c.cap*float64(c.k)) && Residual(c.k, got, c.loss) > c.target {
			t.Errorf("k=%d loss %.2f: m=%d leaves %.4f > target %.2f", c.k, c.loss, got, Residual(c.k, got, c.loss), c.target)
		}
		if got > 0 && Residual(c.k, got-1, c.loss) <= c.target {
			t.Errorf("k=%d loss %.2f: m=%d is not the least (m-1 leaves %.4f)", c.k, c.loss, got, Residual(c.k, got-1, c.loss))
		}
	}
}

// TestNackRounds: the NACK rounds that bring a lost message within the
// deadline, from the link's RTT.
func TestNackRounds(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		rtt, deadline time.Duration
		want          int
	}{
		{0, 200 * ms, 5}, // unknown: taken as near
		{ms, 200 * ms, 5},
		{ms, 40 * ms, 1},
		{20 * ms, 200 * ms, 5},
		{40 * ms, 200 * ms, 2},
		{70 * ms, 200 * ms, 1},
		{100 * ms, 200 * ms, 1},
		{130 * ms, 200 * ms, 0},
		{time.Second, 200 * ms, 0},
	} {
		if got := NackRounds(c.rtt, c.deadline); got != c.want {
			t.Errorf("RTT %v, deadline %v: %d rounds, want %d", c.rtt, c.deadline, got, c.want)
		}
	}
}

// TestResidual checks the formula on cases worked by hand and against a
// simulation of Reed-Solomon groups (a group short of k shards rebuilds
// none of its lost data).
func TestResidual(t *testing.T) {
	for _, c := range []struct {
		k, m       int
		loss, want float64
	}{
		{16, 0, 0.1, 0.1},                // no parity: the loss itself
		{1, 1, 0.1, 0.01},                // a copy: both lost
		{2, 1, 0.5, 3*0.125*2/3 + 0.125}, // 2 of 3 lost: 2/3 of the data; all 3: all
		{4, 2, 0, 0},
	} {
		if got := Residual(c.k, c.m, c.loss); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("Residual(%d, %d, %v) = %v want %v", c.k, c.m, c.loss, got, c.want)
		}
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for _, c := range []struct {
		k, m int
		loss float64
	}{{16, 5, 0.1}, {5, 1, 0.1}, {5, 2, 0.1}, {10, 3, 0.05}} {
		const groups = 100000
		lostData := 0
		for range groups {
			lost, data := 0, 0
			for i := 0; i < c.k+c.m; i++ {
				if rng.Float64() < c.loss {
					lost++
					if i < c.k {
						data++
					}
				}
			}
			if lost > c.m {
				lostData += data
			}
		}
		sim, want := float64(lostData)/float64(groups*c.k), Residual(c.k, c.m, c.loss)
		if math.Abs(sim-want) > 0.1*want+0.0005 {
			t.Errorf("k=%d m=%d loss %.2f: simulated %.4f, Residual %.4f", c.k, c.m, c.loss, sim, want)
		}
	}
}

// TestGroupParityRate: on a link where NACKs repair in time, whatever
// sizes GroupDelay closes groups at, parity is m/GroupSize of the data
// messages (to within one shard), where a short group used to get the
// protection of a full one; a full group gets m; no loss, no parity. On a
// far link (no NACK round fits the deadline, or one) a short group gets
// the protection of its size.
func TestGroupParityRate(t *testing.T) {
	for _, c := range []struct {
		name  string
		loss  float64
		rtt   time.Duration
		sizes []int // group sizes, repeated
		want  float64
	}{
		{"full groups", 0.10, 0, []int{16}, 5.0 / 16},
		{"groups of 5 (240/s, 20 ms)", 0.10, 0, []int{5}, 5.0 / 16},
		{"groups of 5, RTT 40 ms (2 NACK rounds)", 0.10, 40 * time.Millisecond, []int{5}, 5.0 / 16},
		{"video bursts and audio", 0.10, time.Millisecond, []int{7, 1, 3, 1, 12}, 5.0 / 16},
		{"single messages", 0.10, 0, []int{1}, 5.0 / 16},
		{"5 % loss, groups of 6", 0.05, 0, []int{6}, 3.0 / 16},
		{"no loss", 0, 0, []int{5, 16}, 0},
		{"groups of 5, RTT 100 ms (1 round)", 0.10, 100 * time.Millisecond, []int{5}, 2.0 / 5},
		{"full groups, RTT 130 ms (none)", 0.10, 130 * time.Millisecond, []int{16}, 6.0 / 16},
		{"groups of 5, RTT 130 ms", 0.10, 130 * time.Millisecond, []int{5}, 2.0 / 5},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := NewSender(SenderConfig{})
			s.SetLink(c.loss, c.rtt)
			now := time.Unix(0, 0)
			buf := make([]byte, 0, 2048)
			parity, data := 0, 0
			emit := func([]byte) { parity++ }
			for g := 0; data < 3000; g++ {
				k := c.sizes[g%len(c.sizes)]
				before := parity
				for range k {
					if _, err := s.Next([]byte{byte(data), 1, 2}, now, buf, emit); err != nil {
						t.Fatal(err)
					}
					data++
				}
				now = now.Add(25 * time.Millisecond)
				s.Tick(now, buf, emit)
				if k == 16 && parity-before != s.Parity() {
					t.Fatalf("a full group got %d parity shards, want %d", parity-before, s.Parity())
				}
				if parity-before > k {
					t.Fatalf("a group of %d got %d parity shards", k, parity-before)
				}
			}
			if got := float64(parity) / float64(data); math.Abs(got-c.want)*float64(data) > 1 {
				t.Errorf("%d parity for %d data messages (%.3f), want %.3f", parity, data, got, c.want)
			}
		})
	}
}

// TestFECRepairsWithoutNack: losing up to m messages of a group, the
// receiver rebuilds each from parity alone.
func TestFECRepairsWithoutNack(t *testing.T) {
	g := newFECGroup()
	s, r, now := g.s, g.r, g.now
	for i := 0; i < 10; i++ {
		msg := fecMsg(i)
		seq, err := s.Next(msg, now, make([]byte, 0, 2048), g.emit)
		if err != nil {
			t.Fatal(err)
		}
		if !g.lose[seq] {
			r.OnData(seq, msg, now, g.deliver)
		}
	}
	g.repairAll(t)
	if r.Recovered != 4 {
		t.Fatalf("recovered %d", r.Recovered)
	}
	if n := r.NackDue(now.Add(time.Second), 0, nil); len(n) != 0 {
		t.Fatalf("NACKs after repair: %v", n)
	}
}

func TestRetransmitBounded(t *testing.T) {
	s := NewSender(SenderConfig{History: 64, MaxRetransmits: 2})
	now := time.Unix(0, 0)
	for i := 0; i < 100; i++ {
		s.Next([]byte{byte(i)}, now, make([]byte, 0, 2048), func([]byte) {})
	}
	if m, ok := s.Retransmit(100); !ok || m[0] != 99 {
		t.Fatalf("seq 100: %v %v", m, ok)
	}
	s.Retransmit(100)
	if _, ok := s.Retransmit(100); ok {
		t.Fatal("a third retransmission of one message")
	}
	if _, ok := s.Retransmit(10); ok {
		t.Fatal("a message older than the history")
	}
	if s.Retransmits != 2 || s.Refused != 2 {
		t.Fatalf("retransmits %d refused %d", s.Retransmits, s.Refused)
	}
}

// TestParityBeforeData: parity that arrives before any of its group's
// data (reordering) still repairs the group once enough data follows.
func TestParityBeforeData(t *testing.T) {
	s := NewSender(SenderConfig{GroupSize: 4})
	s.SetLoss(0.2)
	now := time.Unix(0, 0)
	var parity [][]byte
	var msgs [][]byte
	for i := 0; i < 8; i++ {
		msg := []byte{byte(i), byte(i)}
		msgs = append(msgs, msg)
		s.Next(msg, now, make([]byte, 0, 2048), func(b []byte) { parity = append(parity, append([]byte(nil), b...)) })
	}
	r := NewReceiver(ReceiverConfig{})
	got := map[uint32]bool{}
	deliver := func(seq uint32, _ []byte) { got[seq] = true }
	for i := 1; i <= 4; i++ { // first group, in order
		r.OnData(uint32(i), msgs[i-1], now, deliver)
	}
	// the second group's parity first, then its data but seq 6
	m := s.Parity()
	for _, b := range parity[m:] {
		var p relaywire.Parity
		if err := relaywire.ParseParity(b, &p); err != nil {
			t.Fatal(err)
		}
		r.OnParity(&p, deliver)
	}
	for _, i := range []int{5, 7} { // with 2 parity shards, 2 of 4 data rebuild the rest
		r.OnData(uint32(i), msgs[i-1], now, deliver)
	}
	if m != 2 || !got[6] || !got[8] || r.Recovered != 2 {
		t.Fatalf("m=%d: seqs 6 and 8 not rebuilt from parity that came first (recovered %d)", m, r.Recovered)
	}
	if r.OnData(8, msgs[7], now, deliver) {
		t.Fatal("seq 8 taken twice")
	}
}

func TestNackAndGiveUp(t *testing.T) {
	r := NewReceiver(ReceiverConfig{MaxNacks: 2})
	now := time.Unix(0, 0)
	nop := func(uint32, []byte) {}
	r.OnData(1, []byte("a"), now, nop)
	r.OnData(4, []byte("d"), now, nop)
	if n := r.NackDue(now, 0, nil); len(n) != 0 {
		t.Fatalf("NACK before NackDelay: %v", n)
	}
	now = now.Add(5 * time.Millisecond)
	if n := r.NackDue(now, 0, nil); len(n) != 2 || n[0] != 2 || n[1] != 3 {
		t.Fatalf("NACKs %v", n)
	}
	r.OnData(2, []byte("b"), now, nop)
	now = now.Add(20 * time.Millisecond)
	if n := r.NackDue(now, 0, nil); len(n) != 1 || n[0] != 3 {
		t.Fatalf("second NACKs %v", n)
	}
	now = now.Add(20 * time.Millisecond)
	r.NackDue(now, 0, nil)
	if r.GivenUp != 1 {
		t.Fatalf("given up %d", r.GivenUp)
	}
	if r.OnData(2, []byte("b"), now, nop) || r.Duplicates != 1 {
		t.Fatal("duplicate accepted")
	}
	if l := r.TakeLoss(); l != 0.5 {
		t.Fatalf("loss %v want 0.5 (2 holes in 4)", l)
	}
	// a jump far ahead is not NACKed one by one
	r.OnData(100000, []byte("z"), now, nop)
	if r.Jumps != 1 || len(r.miss) > 1 {
		t.Fatalf("jump: %d tracked", len(r.miss))
	}
}

// TestNackWaitsForFEC: while parity arrives, a gap is NACKed FECWait
// after it was seen, not NackDelay, unless FEC repairs it first; parity
// of its group that cannot rebuild it ends the wait; without parity a gap
// is NACKed after NackDelay.
func TestNackWaitsForFEC(t *testing.T) {
	t0 := time.Unix(0, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	nop := func(uint32, []byte) {}
	type parity struct{ base, k, m uint32 }
	for _, c := range []struct {
		name    string
		prior   bool    // a parity of an earlier group arrived: FEC on
		par     *parity // then parity covering the gap, at 5 ms
		nackAt  int     // first ms (of 1..40) the gap is NACKed; 0 never
		rebuilt bool
	}{
		{name: "no FEC on the link", nackAt: 3},
		{name: "FEC on: waits for the group's parity", prior: true, nackAt: 25},
		{name: "parity that cannot rebuild it ends the wait", prior: true, par: &parity{17, 4, 1}, nackAt: 5},
		{name: "parity rebuilds it: never NACKed", prior: true, par: &parity{17, 4, 2}, rebuilt: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := NewSender(SenderConfig{GroupSize: 4})
			s.SetLoss(0.2) // k=4: m=2 each full group
			var bodies [][]byte
			emit := func(b []byte) { bodies = append(bodies, append([]byte(nil), b...)) }
			var msgs [][]byte
			for i := 0; i < 20; i++ {
				msgs = append(msgs, []byte{byte(i)})
				if _, err := s.Next(msgs[i], t0, make([]byte, 0, 2048), emit); err != nil {
					t.Fatal(err)
				}
			}
			shard := func(base uint32, index int) *relaywire.Parity {
				for _, b := range bodies {
					var p relaywire.Parity
					if err := relaywire.ParseParity(b, &p); err != nil {
						t.Fatal(err)
					}
					if p.Base == base && int(p.Index) == index {
						return &p
					}
				}
				t.Fatalf("no parity %d/%d", base, index)
				return nil
			}
			r := NewReceiver(ReceiverConfig{})
			for seq := uint32(1); seq <= 16; seq++ {
				r.OnData(seq, msgs[seq-1], t0, nop)
			}
			if c.prior {
				r.OnParity(shard(13, 0), nop)
			}
			// seqs 17..20 are a group; 18 and 19 are lost
			r.OnData(17, msgs[16], at(0), nop)
			r.OnData(20, msgs[19], at(0), nop)
			first := 0
			for ms := 1; ms <= 40 && first == 0; ms++ {
				if c.par != nil && ms == 5 {
					for i := 0; i < int(c.par.m); i++ {
						r.OnParity(shard(c.par.base, i), nop)
					}
				}
				if n := r.NackDue(at(ms), 0, nil); len(n) > 0 {
					first = ms
				}
			}
			if first != c.nackAt {
				t.Errorf("first NACK at %d ms, want %d", first, c.nackAt)
			}
			if got := r.has(18) && r.has(19); got != c.rebuilt {
				t.Errorf("rebuilt %v want %v", got, c.rebuilt)
			}
		})
	}
}

// TestLossyUDPLink sends media over a real UDP loopback link that loses
// 10 % of the frames each way (emulated in the test's senders), with FEC
// following the loss the receiver reports and NACKs, and checks that at
// least 99.5 % of the messages arrive within the playout deadline.
func TestLossyUDPLink(t *testing.T) {
	const (
		count    = 4000
		perTick  = 4 // 4,000 packets a second
		deadline = 100 * time.Millisecond
		lossRate = 0.10
		size     = 300
	)
	secret := bytes.Repeat([]byte{1}, 32)
	lo := netip.MustParseAddrPort("127.0.0.1:0")
	ca, cb := testkit.ListenUDP(t, lo), testkit.ListenUDP(t, lo)
	aAddr, bAddr := ca.LocalAddr().(*net.UDPAddr).AddrPort(), cb.LocalAddr().(*net.UDPAddr).AddrPort()
	la, _ := relaywire.NewLink(secret, 1, 2, 1)
	lb, _ := relaywire.NewLink(secret, 2, 1, 1)
	rngA, rngB := rand.New(rand.NewPCG(1, 2)), rand.New(rand.NewPCG(3, 4))
	var dropped, sent atomic.Int64

	var mu sync.Mutex // guards snd, rngA and the frame buffer
	snd := NewSender(SenderConfig{})
	frame := make([]byte, 0, 2048)
	body := make([]byte, 0, 2048)
	sendA := func(typ relaywire.Type, b []byte) {
		sent.Add(1)
		if rngA.Float64() < lossRate {
			dropped.Add(1)
			return
		}
		frame = la.Seal(frame[:0], typ, b)
		_, _ = ca.WriteToUDPAddrPort(frame, bAddr)
	}
	emit := func(p []byte) { sendA(relaywire.TypeParity, p) }

	// A's reader: NACKs and echoes from B.
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		var seqs []uint32
		pbuf := make([]byte, 0, 2048)
		for {
			n, _, err := ca.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			h, b, err := la.Open(buf[:n])
			if err != nil {
				continue
			}
			mu.Lock()
			switch h.Type {
			case relaywire.TypeNack:
				seqs, _ = relaywire.ParseNack(b, seqs)
				for _, s := range seqs {
					if msg, ok := snd.Retransmit(s); ok {
						body = relaywire.AppendData(body[:0], s, msg)
						sendA(relaywire.TypeData, body)
					}
				}
			case relaywire.TypeEcho:
				if e, err := relaywire.ParseEcho(b); err == nil {
					snd.SetLoss(float64(e.LossPPM) / 1e6)
				}
			}
			_ = pbuf
			mu.Unlock()
		}
	}()

	// B: receive, repair, NACK, report loss.
	inTime := make([]bool, count)
	var onTime atomic.Int64
	stop := make(chan struct{})
	go func() {
		defer wg.Done()
		rcv := NewReceiver(ReceiverConfig{})
		buf := make([]byte, 2048)
		out := make([]byte, 0, 2048)
		var nacks []uint32
		var p relaywire.Parity
		sendB := func(typ relaywire.Type, b []byte) {
			if rngB.Float64() < lossRate {
				return
			}
			out = lb.Seal(out[:0], typ, b)
			_, _ = cb.WriteToUDPAddrPort(out, aAddr)
		}
		deliver := func(_ uint32, msg []byte) {
			sentAt := time.Unix(0, int64(binary.BigEndian.Uint64(msg)))
			i := binary.BigEndian.Uint32(msg[8:])
			if int(i) < count && !inTime[i] && time.Since(sentAt) <= deadline {
				inTime[i] = true
				onTime.Add(1)
			}
		}
		lastReport := time.Now()
		var ctl []byte
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = cb.SetReadDeadline(time.Now().Add(2 * time.Millisecond))
			n, _, err := cb.ReadFromUDPAddrPort(buf)
			now := time.Now()
			if err == nil {
				if h, b, err := lb.Open(buf[:n]); err == nil {
					switch h.Type {
					case relaywire.TypeData:
						if seq, msg, err := relaywire.ParseData(b); err == nil {
							rcv.OnData(seq, msg, now, deliver)
						}
					case relaywire.TypeParity:
						if relaywire.ParseParity(b, &p) == nil {
							rcv.OnParity(&p, deliver)
						}
					}
				}
			} else if !errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			if nacks = rcv.NackDue(now, 0, nacks[:0]); len(nacks) > 0 {
				ctl, _ = relaywire.AppendNack(ctl[:0], nacks)
				sendB(relaywire.TypeNack, ctl)
			}
			if now.Sub(lastReport) >= 50*time.Millisecond {
				lastReport = now
				if l := rcv.TakeLoss(); l >= 0 {
					sendB(relaywire.TypeEcho, relaywire.AppendEcho(ctl[:0], relaywire.Echo{LossPPM: uint32(l * 1e6)}))
				}
			}
		}
	}()
	t.Cleanup(func() { close(stop); ca.Close(); wg.Wait() })

	msg := make([]byte, size)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	pb := make([]byte, 0, 2048)
	for i := 0; i < count; {
		<-tick.C
		mu.Lock()
		now := time.Now()
		snd.Tick(now, pb, emit)
		for j := 0; j < perTick && i < count; j, i = j+1, i+1 {
			binary.BigEndian.PutUint64(msg, uint64(time.Now().UnixNano()))
			binary.BigEndian.PutUint32(msg[8:], uint32(i))
			seq, _ := snd.Next(msg, now, pb, emit)
			body = relaywire.AppendData(body[:0], seq, msg)
			sendA(relaywire.TypeData, body)
		}
		mu.Unlock()
	}
	ok := testkit.Eventually(deadline+200*time.Millisecond, func() bool { return onTime.Load() >= count })
	mu.Lock()
	defer mu.Unlock()
	got := onTime.Load()
	frac := float64(got) / count
	t.Logf("delivered in time %d/%d (%.2f %%); frames dropped %d/%d; FEC parity %d shards, %.1f %% of data bytes; retransmits %d (%.1f %% of data); final FEC m=%d of k=16 ok=%v",
		got, count, 100*frac, dropped.Load(), sent.Load(), snd.ParitySent, 100*float64(snd.ParityBytes)/float64(snd.DataBytes),
		snd.Retransmits, 100*float64(snd.Retransmits)/float64(snd.DataSent), snd.Parity(), ok)
	if frac < 0.995 {
		t.Fatalf("%.2f %% in time, want >= 99.5 %%", 100*frac)
	}
	if snd.Parity() == 0 {
		t.Fatal("FEC did not follow the measured loss")
	}
}

// fecMsg is the message i of the FEC tests' group of ten.
func fecMsg(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 20+i*7) }

// fecGroup is the FEC tests' group of ten messages (fecMsg) at 10 %
// loss, four of them lost.
type fecGroup struct {
	s      *Sender
	r      *Receiver
	now    time.Time
	got    map[uint32][]byte
	parity [][]byte
	lose   map[uint32]bool
}

func newFECGroup() *fecGroup {
	g := &fecGroup{s: NewSender(SenderConfig{GroupSize: 10}), r: NewReceiver(ReceiverConfig{}), now: time.Unix(0, 0),
		got: map[uint32][]byte{}, lose: map[uint32]bool{2: true, 5: true, 6: true, 10: true}}
	g.s.SetLoss(0.10)
	return g
}

func (g *fecGroup) emit(b []byte)                  { g.parity = append(g.parity, append([]byte(nil), b...)) }
func (g *fecGroup) deliver(seq uint32, msg []byte) { g.got[seq] = append([]byte(nil), msg...) }

// repairAll hands the receiver the group's four parity bodies and checks
// that it delivered all ten messages.
func (g *fecGroup) repairAll(t *testing.T) {
	t.Helper()
	if len(g.parity) != 4 {
		t.Fatalf("%d parity shards, want 4 (k=10, 10 %% loss)", len(g.parity))
	}
	for _, b := range g.parity {
		var p relaywire.Parity
		if err := relaywire.ParseParity(b, &p); err != nil {
			t.Fatal(err)
		}
		g.r.OnParity(&p, g.deliver)
	}
	for i := 0; i < 10; i++ {
		if !bytes.Equal(g.got[uint32(i+1)], fecMsg(i)) {
			t.Fatalf("seq %d: %x", i+1, g.got[uint32(i+1)])
		}
	}
}

// TestNextDataBodies: NextData's and RetransmitData's bodies are the
// sequence then the message (relaywire.AppendData's encoding), built in
// the history slot; building them over the shards' length prefixes, also
// for messages of a group still open (a retransmission), leaves the
// group's parity intact: the receiver rebuilds what it lost.
func TestNextDataBodies(t *testing.T) {
	g := newFECGroup()
	s, r, now := g.s, g.r, g.now
	for i := 0; i < 10; i++ {
		msg := fecMsg(i)
		body, err := s.NextData(msg[:5], msg[5:], now, make([]byte, 0, 2048), g.emit)
		if err != nil {
			t.Fatal(err)
		}
		seq, m, err := relaywire.ParseData(body)
		if err != nil || !bytes.Equal(body, relaywire.AppendData(nil, uint32(i+1), msg)) {
			t.Fatalf("message %d: body %x (%v)", i, body, err)
		}
		if i >= 2 { // a retransmission inside the open group
			rb, ok := s.RetransmitData(uint32(i - 1))
			if !ok || !bytes.Equal(rb, relaywire.AppendData(nil, uint32(i-1), fecMsg(i-2))) {
				t.Fatalf("retransmission of %d: %x %v", i-1, rb, ok)
			}
		}
		if !g.lose[seq] {
			r.OnData(seq, m, now, g.deliver)
		}
	}
	g.repairAll(t)
	if m, ok := s.Retransmit(3); !ok || !bytes.Equal(m, fecMsg(2)) {
		t.Fatalf("Retransmit(3) after data bodies: %x %v", m, ok)
	}
	if _, err := s.NextData(make([]byte, 1000), make([]byte, relaywire.MaxShardLen-1002+1), now, nil, nil); err != ErrTooBig {
		t.Fatalf("an oversized message: %v", err)
	}
}
