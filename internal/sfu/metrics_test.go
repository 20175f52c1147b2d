package sfu

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricsRegister: every counter of a node registers, under a name of
// its own (a duplicate panics in MustRegister, which only a node with a
// registry reaches: the traverse command's).
func TestMetricsRegister(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	s := &Server{}
	s.m = newMetrics(s, reg)
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}
