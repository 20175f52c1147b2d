package stun

import "github.com/prometheus/client_golang/prometheus"

// metrics are one server's counters, registered in the registry it was
// given (never the global one).
type metrics struct {
	requests  [numTransports]prometheus.Counter
	success   [numTransports]prometheus.Counter
	errors    [numTransports]prometheus.Counter
	dropped   [numReasons]prometheus.Counter
	sendFail  prometheus.Counter
	tcpConns  prometheus.Gauge
	tcpRefuse [numRefusals]prometheus.Counter
	timeouts  [numTimeouts]prometheus.Counter
}

// Why a TCP or TLS connection was refused.
const (
	refuseTotal = iota
	refusePerAddr
	numRefusals
)

// Which deadline closed a TCP or TLS connection.
const (
	timeoutFirst = iota
	timeoutIdle
	numTimeouts
)

var (
	refusalNames = [numRefusals]string{"total", "per_address"}
	timeoutNames = [numTimeouts]string{"first_message", "idle"}
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_stun_" + name, Help: help}, labels)
	}
	req := vec("requests_total", "STUN requests accepted for processing, by transport.", "transport")
	resp := vec("responses_total", "STUN responses sent, by transport and result (success or error).", "transport", "result")
	drop := vec("dropped_total", "Messages dropped without an answer, by reason.", "reason")
	sendFail := prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_stun_send_errors_total",
		Help: "Responses the kernel refused to send."})
	conns := prometheus.NewGauge(prometheus.GaugeOpts{Name: "traverse_stun_tcp_connections",
		Help: "Open STUN connections over TCP and TLS."})
	refused := vec("tcp_refused_total",
		"TCP and TLS connections closed at once, by reason: total (max-tcp-conns open) or per_address (max-tcp-conns-per-addr open from its source).",
		"reason")
	timeouts := vec("tcp_timeouts_total",
		"TCP and TLS connections closed by a deadline, by reason: first_message (no request answered within first-message-timeout) or idle (idle-timeout).",
		"reason")
	for _, c := range []prometheus.Collector{req, resp, drop, sendFail, conns, refused, timeouts} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m := &metrics{sendFail: sendFail, tcpConns: conns}
	for i, n := range refusalNames {
		m.tcpRefuse[i] = refused.WithLabelValues(n)
	}
	for i, n := range timeoutNames {
		m.timeouts[i] = timeouts.WithLabelValues(n)
	}
	for t := range numTransports {
		n := transportNames[t]
		m.requests[t] = req.WithLabelValues(n)
		m.success[t] = resp.WithLabelValues(n, "success")
		m.errors[t] = resp.WithLabelValues(n, "error")
	}
	for r := dropShort; r < numReasons; r++ {
		m.dropped[r] = drop.WithLabelValues(reasonNames[r])
	}
	return m, nil
}

// tally counts one reader's batch, flushed into metrics once per batch.
type tally struct {
	requests, success, errors int
	dropped                   [numReasons]int
}

func (t *tally) add(r *result) {
	if r.drop != dropNone {
		t.dropped[r.drop]++
		return
	}
	t.requests++
	if r.err {
		t.errors++
	} else {
		t.success++
	}
}

func (m *metrics) flush(tr transport, t *tally) {
	if t.requests > 0 {
		m.requests[tr].Add(float64(t.requests))
	}
	if t.success > 0 {
		m.success[tr].Add(float64(t.success))
	}
	if t.errors > 0 {
		m.errors[tr].Add(float64(t.errors))
	}
	for r := dropShort; r < numReasons; r++ {
		if t.dropped[r] > 0 {
			m.dropped[r].Add(float64(t.dropped[r]))
		}
	}
	*t = tally{}
}
