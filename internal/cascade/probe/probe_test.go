package probe

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
)

func TestProberMeasures(t *testing.T) {
	p := New(Config{Window: 100})
	now := time.Unix(1000, 0)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := 0; i < 400; i++ {
		now = now.Add(200 * time.Millisecond)
		pr := p.Probe(now)
		if rng.Float64() < 0.2 {
			continue // lost
		}
		rtt := 20*time.Millisecond + time.Duration(rng.IntN(4000))*time.Microsecond // 20-24 ms
		p.OnEcho(relaywire.Echo{ID: pr.ID, Sent: pr.Sent, LossPPM: 50000}, now.Add(rtt))
	}
	s := p.Stats(now.Add(2 * time.Second))
	if s.RTT < 20*time.Millisecond || s.RTT > 24*time.Millisecond {
		t.Errorf("RTT %v, want 20-24 ms", s.RTT)
	}
	if s.Jitter < 500*time.Microsecond || s.Jitter > 2*time.Millisecond {
		t.Errorf("jitter %v, want about 1.3 ms (mean |difference| of uniform 0-4 ms)", s.Jitter)
	}
	if math.Abs(s.Loss-0.2) > 0.1 {
		t.Errorf("loss %v, want about 0.2", s.Loss)
	}
	if s.PeerLoss != 0.05 || math.Abs(s.LossEstimate()-(1-math.Sqrt(1-s.Loss))) > 1e-9 {
		t.Errorf("peer loss %v", s.PeerLoss)
	}
	if !s.Up {
		t.Error("down")
	}
	if p.Stats(now.Add(3 * time.Second)).Up {
		t.Error("up 3 s after the last echo")
	}
}

func TestProberRejectsForgedEchoes(t *testing.T) {
	p := New(Config{})
	now := time.Unix(1000, 0)
	pr := p.Probe(now)
	p.OnEcho(relaywire.Echo{ID: pr.ID, Sent: pr.Sent - 5e6}, now.Add(time.Millisecond)) // claims an older send
	p.OnEcho(relaywire.Echo{ID: pr.ID + 1, Sent: pr.Sent}, now.Add(time.Millisecond))   // answers no probe
	if p.Unmatched != 2 || p.Stats(now).Up {
		t.Fatalf("forged echoes taken: unmatched %d", p.Unmatched)
	}
	p.OnEcho(relaywire.Echo{ID: pr.ID, Sent: pr.Sent}, now.Add(time.Millisecond))
	p.OnEcho(relaywire.Echo{ID: pr.ID, Sent: pr.Sent}, now.Add(2*time.Millisecond)) // replayed
	if p.Unmatched != 3 || p.Stats(now).RTT != time.Millisecond {
		t.Fatalf("unmatched %d rtt %v", p.Unmatched, p.Stats(now).RTT)
	}
}
