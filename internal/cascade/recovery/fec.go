package recovery

import (
	"math"
	"sync"

	"github.com/klauspost/reedsolomon"
)

// Residual is the expected fraction of a group's k data messages that FEC
// with m parity shards leaves unrepaired on a link losing packets
// independently with probability loss: the group of n = k+m shards is
// rebuilt whole when at most m are lost; with L > m lost, the L*k/n data
// messages among them stay lost (Reed-Solomon rebuilds none of a group
// short of k shards). So Residual = sum over L > m of P(L) * L/n, with
// L ~ Binomial(n, loss). It is what the NACKs are left to repair.
func Residual(k, m int, loss float64) float64 {
	if k <= 0 || loss <= 0 {
		return 0
	}
	loss = min(loss, 0.999)
	n := k + m
	r := 0.0
	term := math.Pow(1-loss, float64(n)) // P(L=0)
	for l := 0; l <= n; l++ {
		if l > m {
			r += term * float64(l) / float64(n)
		}
		term *= float64(n-l) / float64(l+1) * loss / (1 - loss)
	}
	return r
}

// ParityFor returns the number of parity shards m to add to k data shards
// on a link losing packets independently with probability loss: the
// least m that leaves at most target of the data messages unrepaired by
// FEC (Residual), with m <= maxOverhead*k. A loss at or below target
// needs no parity. Where the cap binds, the rest is left to NACKs.
//
// The target is a per-message residual, not a per-group one: of a group
// FEC cannot rebuild only the lost messages are lost, and NACKs are the
// second line for them. With the Sender's defaults (k=16, target 0.01,
// overhead cap 0.5): loss 1 % gives m=0, 2 % m=2, 5 % m=3, 10 % m=5
// (31 % overhead), 20 % m=8 (the cap; Residual 1.4 %).
func ParityFor(k int, loss, target, maxOverhead float64) int {
	if k <= 0 || loss <= 0 {
		return 0
	}
	maxM := int(math.Floor(maxOverhead * float64(k)))
	for m := 0; m <= maxM; m++ {
		if Residual(k, m, loss) <= target {
			return m
		}
	}
	return maxM
}

// codecs caches one encoder per (k, m): building one costs far more than
// using it.
var codecs sync.Map // [2]int -> reedsolomon.Encoder

func codec(k, m int) (reedsolomon.Encoder, error) {
	key := [2]int{k, m}
	if e, ok := codecs.Load(key); ok {
		return e.(reedsolomon.Encoder), nil
	}
	e, err := reedsolomon.New(k, m)
	if err != nil {
		return nil, err
	}
	codecs.Store(key, e)
	return e, nil
}
