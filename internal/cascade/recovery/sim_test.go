package recovery

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
)

// simFrame is a frame in flight on the simulated link.
type simFrame struct {
	at     time.Time
	parity bool
	seq    uint32
	body   []byte // the message, or the parity body
}

// simResult is what a simulated run measured.
type simResult struct {
	sent, inTime                   int
	parity, retransmits, recovered uint64
}

func (r simResult) fraction() float64 { return float64(r.inTime) / float64(r.sent) }
func (r simResult) overhead() float64 { return float64(r.parity) / float64(r.sent) }

// simulate runs a Sender and a Receiver over a link with one-way delay
// rtt/2 that loses each frame (data, parity, retransmission and NACK)
// independently with probability loss, on a virtual clock in 1 ms steps
// with the relay endpoint's 5 ms timer tick; the sender knows the loss
// and the RTT.
// burst(ms) is how many messages are sent at that millisecond. A message
// is in time when delivered within deadline of its sending.
func simulate(t *testing.T, seed uint64, dur, rtt, deadline time.Duration, loss float64, burst func(ms int) int) simResult {
	return simulateWith(t, seed, dur, rtt, deadline, loss, burst, ReceiverConfig{})
}

func simulateWith(t *testing.T, seed uint64, dur, rtt, deadline time.Duration, loss float64, burst func(ms int) int, rc ReceiverConfig) simResult {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed+1))
	s := NewSender(SenderConfig{})
	s.SetLink(loss, rtt)
	r := NewReceiver(rc)
	t0 := time.Unix(1000, 0)
	var res simResult
	sentAt := map[uint32]time.Time{}
	done := map[uint32]bool{}
	deliver := func(now time.Time) func(uint32, []byte) {
		return func(_ uint32, msg []byte) {
			i := binary.BigEndian.Uint32(msg)
			if !done[i] && now.Sub(sentAt[i]) <= deadline {
				done[i] = true
				res.inTime++
			}
		}
	}
	var toB []simFrame
	var toA []simFrame // NACKs, one sequence each
	oneWay := rtt / 2
	now := t0
	send := func(f simFrame) {
		if rng.Float64() >= loss {
			f.at = now.Add(oneWay)
			toB = append(toB, f)
		}
	}
	buf := make([]byte, 0, 2048)
	emit := func(b []byte) { send(simFrame{parity: true, body: append([]byte(nil), b...)}) }
	msg := make([]byte, 200)
	var nacks []uint32
	var p relaywire.Parity
	for ms := 0; now.Sub(t0) < dur+deadline; ms++ {
		now = t0.Add(time.Duration(ms) * time.Millisecond)
		if now.Sub(t0) < dur {
			for range burst(ms) {
				binary.BigEndian.PutUint32(msg, uint32(res.sent))
				seq, err := s.Next(msg, now, buf, emit)
				if err != nil {
					t.Fatal(err)
				}
				sentAt[uint32(res.sent)] = now
				res.sent++
				send(simFrame{seq: seq, body: append([]byte(nil), msg...)})
			}
		}
		// frames due at B, then NACKs due at A
		keep := toB[:0]
		for _, f := range toB {
			if f.at.After(now) {
				keep = append(keep, f)
				continue
			}
			if f.parity {
				if err := relaywire.ParseParity(f.body, &p); err != nil {
					t.Fatal(err)
				}
				r.OnParity(&p, deliver(now))
			} else {
				r.OnData(f.seq, f.body, now, deliver(now))
			}
		}
		toB = keep
		keepA := toA[:0]
		for _, f := range toA {
			if f.at.After(now) {
				keepA = append(keepA, f)
				continue
			}
			if m, ok := s.Retransmit(f.seq); ok {
				send(simFrame{seq: f.seq, body: append([]byte(nil), m...)})
			}
		}
		toA = keepA
		if ms%5 == 0 { // the relay's timer tick
			s.Tick(now, buf, emit)
			nacks = r.NackDue(now, rtt, nacks[:0])
			if len(nacks) > 0 {
				if rng.Float64() >= loss {
					for _, q := range nacks {
						toA = append(toA, simFrame{at: now.Add(oneWay), seq: q})
					}
				}
			}
		}
	}
	res.parity, res.retransmits, res.recovered = s.ParitySent, s.Retransmits, r.Recovered
	return res
}

// Uniform sends perSecond messages a second, evenly spread.
func uniform(perSecond int) func(int) int {
	return func(ms int) int { return (ms+1)*perSecond/1000 - ms*perSecond/1000 }
}

// video is TestCascadeLab's kind of media: 30 video frames a second of
// 7 packets sent back to back, and an audio packet every 20 ms (260
// messages a second).
func video(ms int) int {
	n := 0
	if ms%33 == 0 {
		n += 7
	}
	if ms%20 == 0 {
		n++
	}
	return n
}

// TestSimulatedLossyLink: 10 % loss each way, on a near link (RTT 1 ms:
// five NACK rounds fit in the 200 ms playout deadline) and a far one (RTT
// 100 ms: one round), at 3,000 messages a second (full FEC groups), 240
// (groups of 5-6 closed by GroupDelay) and bursty video: >= 99.5 % in
// time. On the near link parity is the full groups' rate whatever the
// message rate (ParityFor(16, 0.1) = 5 per 16, 31 %); on the far link a
// short group gets the protection of its own size (up to MaxOverhead).
func TestSimulatedLossyLink(t *testing.T) {
	const deadline = 200 * time.Millisecond
	for _, c := range []struct {
		name   string
		rtt    time.Duration
		dur    time.Duration
		burst  func(int) int
		lo, hi float64 // parity per data message
	}{
		{"3000/s RTT 1ms", time.Millisecond, 3 * time.Second, uniform(3000), 0.30, 0.32},
		{"240/s RTT 1ms", time.Millisecond, 20 * time.Second, uniform(240), 0.30, 0.32},
		{"video RTT 1ms", time.Millisecond, 20 * time.Second, video, 0.30, 0.32},
		{"3000/s RTT 100ms", 100 * time.Millisecond, 3 * time.Second, uniform(3000), 0.30, 0.32},
		{"240/s RTT 100ms", 100 * time.Millisecond, 20 * time.Second, uniform(240), 0.32, 0.50},
		{"video RTT 100ms", 100 * time.Millisecond, 20 * time.Second, video, 0.32, 0.50},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := simulate(t, 7, c.dur, c.rtt, deadline, 0.10, c.burst)
			t.Logf("%d messages: %.2f %% in time; parity %.1f %% of data, retransmissions %.1f %%, rebuilt by FEC %.1f %%",
				res.sent, 100*res.fraction(), 100*res.overhead(), 100*float64(res.retransmits)/float64(res.sent),
				100*float64(res.recovered)/float64(res.sent))
			if res.fraction() < 0.995 {
				t.Errorf("%.2f %% in time, want >= 99.5 %%", 100*res.fraction())
			}
			if o := res.overhead(); o < c.lo || o > c.hi {
				t.Errorf("parity %.1f %% of data, want %.0f-%.0f %%", 100*o, 100*c.lo, 100*c.hi)
			}
		})
	}
}
