package connlimit

import "github.com/prometheus/client_golang/prometheus"

// Metrics are one listener's counters. Several listeners may register in
// one registry: each carries its own listener label.
type Metrics struct {
	accepted     prometheus.Counter
	open         prometheus.Gauge
	refusedTotal prometheus.Counter
	refusedPer   prometheus.Counter
	timeouts     prometheus.Counter
}

// NewMetrics registers the counters of the listener named listener (e.g.
// "signal", "admin", "turn_tcp") in reg:
//
//	traverse_listener_connections_accepted_total{listener}
//	traverse_listener_connections_open{listener}
//	traverse_listener_connections_refused_total{listener,reason=total|per_addr}
//	traverse_listener_read_timeouts_total{listener}
func NewMetrics(reg prometheus.Registerer, listener string) (*Metrics, error) {
	l := prometheus.Labels{"listener": listener}
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_listener_connections_refused_total",
		Help:        "TCP connections closed at accept because a cap was reached, by reason (total: the listener's cap; per_addr: the source's).",
		ConstLabels: l}, []string{"reason"})
	m := &Metrics{
		accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_listener_connections_accepted_total",
			Help: "TCP connections accepted within the caps.", ConstLabels: l}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{Name: "traverse_listener_connections_open",
			Help: "TCP connections accepted and not yet closed.", ConstLabels: l}),
		timeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_listener_read_timeouts_total",
			Help: "Connections whose read hit its deadline (HTTP: header or idle timeout), counted once per connection.", ConstLabels: l}),
		refusedTotal: refused.WithLabelValues(ReasonTotal),
		refusedPer:   refused.WithLabelValues(ReasonPerAddr),
	}
	for _, c := range []prometheus.Collector{m.accepted, m.open, m.timeouts, refused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func discard() *Metrics {
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "discard"}, []string{"reason"})
	return &Metrics{
		accepted:     prometheus.NewCounter(prometheus.CounterOpts{Name: "discard"}),
		open:         prometheus.NewGauge(prometheus.GaugeOpts{Name: "discard"}),
		timeouts:     prometheus.NewCounter(prometheus.CounterOpts{Name: "discard"}),
		refusedTotal: refused.WithLabelValues(ReasonTotal),
		refusedPer:   refused.WithLabelValues(ReasonPerAddr),
	}
}

func (m *Metrics) refused(reason string) {
	if reason == ReasonTotal {
		m.refusedTotal.Inc()
	} else {
		m.refusedPer.Inc()
	}
}
