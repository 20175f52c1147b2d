package testkit

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric gathers g and returns the sum of the counter and gauge values of
// the series named name whose labels include every pair in labels (nil:
// every series of that name). It is 0 when no series matches, as a
// counter that has not triggered yet reads.
func Metric(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			matched := 0
			for _, lp := range m.GetLabel() {
				want, ok := labels[lp.GetName()]
				if !ok {
					continue
				}
				if want != lp.GetValue() {
					continue series
				}
				matched++
			}
			if matched == len(labels) {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}
