package recovery

import (
	"math"
	"sync"

	"github.com/klauspost/reedsolomon"
)

// ParityFor returns the number of parity shards m to add to k data shards
// on a link losing packets independently with probability loss, so that a
// group is lost beyond repair (more than m of its k+m shards lost) with
// probability at most target, and m <= maxOverhead*k. A loss of 0 needs no
// parity. Where the bound caps m, the residual is left to NACKs.
//
// With the Sender's defaults (k=16, target 0.01, overhead cap 0.5): loss
// 1 % gives m=2, 5 % m=4, 10 % m=6 (37.5 % overhead), 20 % would need 10
// and is capped at 8.
func ParityFor(k int, loss, target, maxOverhead float64) int {
	if k <= 0 || loss <= 0 {
		return 0
	}
	if loss >= 1 {
		loss = 0.999
	}
	maxM := int(math.Floor(maxOverhead * float64(k)))
	for m := 0; m <= maxM; m++ {
		if binomTail(k+m, m, loss) <= target {
			return m
		}
	}
	return maxM
}

// binomTail is P(X > m) for X ~ Binomial(n, p).
func binomTail(n, m int, p float64) float64 {
	cdf := 0.0
	term := math.Pow(1-p, float64(n)) // P(X=0)
	for i := 0; i <= m; i++ {
		cdf += term
		term *= float64(n-i) / float64(i+1) * p / (1 - p)
	}
	return math.Max(0, 1-cdf)
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
