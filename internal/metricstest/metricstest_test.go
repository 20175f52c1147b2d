package metricstest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestValue(t *testing.T) {
	reg := prometheus.NewRegistry()
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total"}, []string{"reason", "role"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})
	reg.MustRegister(v, g)
	v.WithLabelValues("a", "x").Add(2)
	v.WithLabelValues("b", "x").Add(3)
	v.WithLabelValues("b", "y").Add(5)
	g.Set(7)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"c_total", nil, 10},
		{"c_total", []string{"reason", "b"}, 8},
		{"c_total", []string{"reason", "b", "role", "x"}, 3},
		{"c_total", []string{"reason", "c"}, 0},
		{"c_total", []string{"other", "b"}, 0},
		{"g", nil, 7},
		{"missing", nil, -1},
	} {
		if got := Value(t, reg, tc.name, tc.labels...); got != tc.want {
			t.Errorf("Value(%s, %q) = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}
