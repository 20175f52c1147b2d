// Package probe measures one relay link from its sending end: it makes
// relaywire.Probe messages, matches the peer's relaywire.Echo answers and
// keeps the link's RTT (smoothed as TCP's SRTT, RFC 6298 §2 gains),
// jitter (the mean deviation of successive RTT samples, as RFC 3550
// §6.4.1 does for transit times), probe loss over a sliding window, the
// loss of data messages the peer reports in its echoes, and whether the
// link is up. It is pure: the relay endpoint sends and receives, the
// caller's clock drives it.
package probe

import (
	"math"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
	"github.com/traverse-rtc/traverse/internal/config"
)

// Config tunes a Prober. Zero values take the defaults.
type Config struct {
	// Interval between probes (default 200 ms: 5 small frames a second per
	// neighbour).
	Interval time.Duration
	// Window is how many recent probes the loss is measured over (default
	// 25: 5 s at the default interval).
	Window int
	// Timeout: a probe unanswered this long counts as lost (default 1 s).
	Timeout time.Duration
	// DownAfter: no echo for this long marks the link down (default 2 s).
	DownAfter time.Duration
}

func (c *Config) defaults() {
	config.Default(&c.Interval, 200*time.Millisecond)
	config.Default(&c.Window, 25)
	config.Default(&c.Timeout, time.Second)
	config.Default(&c.DownAfter, 2*time.Second)
}

type record struct {
	id       uint32
	sent     int64
	answered bool
}

// Prober is one link's prober. It is not safe for concurrent use.
type Prober struct {
	cfg      Config
	nextID   uint32
	ring     []record
	lastSent time.Time
	lastEcho time.Time
	srtt     time.Duration
	jitter   time.Duration
	lastRTT  time.Duration
	peerLoss float64
	samples  int

	// Unmatched counts echoes that answer no outstanding probe (forged,
	// replayed, or later than the window).
	Unmatched uint64
}

// New returns a Prober.
func New(cfg Config) *Prober {
	cfg.defaults()
	return &Prober{cfg: cfg, ring: make([]record, cfg.Window)}
}

// Due reports whether a probe should go out at now.
func (p *Prober) Due(now time.Time) bool { return now.Sub(p.lastSent) >= p.cfg.Interval }

// Probe makes the next probe and records it as sent at now.
func (p *Prober) Probe(now time.Time) relaywire.Probe {
	p.nextID++
	pr := relaywire.Probe{ID: p.nextID, Sent: now.UnixNano()}
	p.ring[p.nextID%uint32(len(p.ring))] = record{id: pr.ID, sent: pr.Sent}
	p.lastSent = now
	return pr
}

// OnEcho takes the peer's echo received at now. The RTT is measured from
// the probe as recorded here, not from the time the echo claims.
func (p *Prober) OnEcho(e relaywire.Echo, now time.Time) {
	r := &p.ring[e.ID%uint32(len(p.ring))]
	if r.id != e.ID || e.ID == 0 || r.answered || r.sent != e.Sent {
		p.Unmatched++
		return
	}
	rtt := time.Duration(now.UnixNano() - r.sent)
	if rtt < 0 || rtt > p.cfg.Timeout {
		p.Unmatched++
		return
	}
	r.answered = true
	p.lastEcho = now
	p.peerLoss = float64(e.LossPPM) / 1e6
	if p.samples == 0 {
		p.srtt = rtt
	} else {
		p.srtt += (rtt - p.srtt) / 8
		d := rtt - p.lastRTT
		if d < 0 {
			d = -d
		}
		p.jitter += (d - p.jitter) / 16
	}
	p.lastRTT = rtt
	p.samples++
}

// Stats is what the prober knows of the link.
type Stats struct {
	RTT, Jitter time.Duration
	// LastRTT is the latest sample: NACK timing takes the smaller of it
	// and RTT, so that one slow first sample (an ARP resolution on a
	// lossy link took 300 ms in the lab) does not delay repairs for
	// seconds while the average forgets it.
	LastRTT time.Duration
	// Loss is the fraction of probes in the window unanswered within
	// Timeout (both directions); PeerLoss the data loss the peer reports
	// (this direction only, before repair).
	Loss, PeerLoss float64
	Up             bool
}

// Stats returns the link's figures at now.
func (p *Prober) Stats(now time.Time) Stats {
	lost, counted := 0, 0
	for _, r := range p.ring {
		if r.id == 0 {
			continue
		}
		if r.answered {
			counted++
		} else if now.UnixNano()-r.sent >= int64(p.cfg.Timeout) {
			counted++
			lost++
		}
	}
	s := Stats{RTT: p.srtt, LastRTT: p.lastRTT, Jitter: p.jitter, PeerLoss: p.peerLoss,
		Up: p.samples > 0 && now.Sub(p.lastEcho) < p.cfg.DownAfter}
	if counted > 0 {
		s.Loss = float64(lost) / float64(counted)
	}
	return s
}

// LossEstimate is the one-way loss the routes should use: the larger of
// the data's (PeerLoss) and the probes' round-trip loss taken as equal
// loss each way (1 - sqrt(1 - Loss)). The FEC follows PeerLoss alone: it
// protects exactly that direction's data.
func (s Stats) LossEstimate() float64 { return max(1-math.Sqrt(1-s.Loss), s.PeerLoss) }
