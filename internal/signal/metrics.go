package signal

import "github.com/prometheus/client_golang/prometheus"

// metrics are one Server's counters; each Server registers its own.
type metrics struct {
	connections   prometheus.Counter
	active        prometheus.Gauge
	messages      *prometheus.CounterVec // by type
	badMessages   *prometheus.CounterVec // by reason
	tokenRejected *prometheus.CounterVec // by reason
	rateLimited   prometheus.Counter
	dropped       *prometheus.CounterVec // outbound drops by reason
	nodeErrors    prometheus.Counter
	demoTokens    prometheus.Counter
	placements    *prometheus.CounterVec // by node
	joinTimeouts  prometheus.Counter
	originRefused *prometheus.CounterVec // by endpoint (ws, token)
	rejoins       *prometheus.CounterVec // rejoin messages sent, by reason
	nodesDown     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_signal_connections_total",
			Help: "WebSocket signaling connections accepted."}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "traverse_signal_sessions_active",
			Help: "Signaling connections open now."}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_messages_total",
			Help: "Valid inbound signaling messages by type."}, []string{"type"}),
		badMessages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_bad_messages_total",
			Help: "Inbound signaling messages refused, by reason."}, []string{"reason"}),
		tokenRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_tokens_rejected_total",
			Help: "Join tokens refused, by reason (malformed, signature, expired, not_yet_valid, claims, room)."}, []string{"reason"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_signal_rate_limited_total",
			Help: "Inbound messages dropped by the per-connection rate limit."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_outbound_dropped_total",
			Help: "Outbound messages dropped because the client's queue was full, by reason."}, []string{"reason"}),
		nodeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_signal_node_errors_total",
			Help: "Requests to SFU nodes that failed or timed out."}),
		demoTokens: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_signal_demo_tokens_total",
			Help: "Tokens minted by the demo endpoint."}),
		placements: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_placements_total",
			Help: "Sessions placed, by SFU node."}, []string{"node"}),
		joinTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_signal_join_timeouts_total",
			Help: "WebSockets closed because no join came within the join timeout."}),
		originRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_origin_refused_total",
			Help: "Requests refused with 403 because their Origin (or, for /token, Host) is not allowed, by endpoint (ws, token, api)."},
			[]string{"endpoint"}),
		rejoins: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_rejoins_total",
			Help: "Rejoin messages sent to clients, by reason (node_failed, drain)."}, []string{"reason"}),
		nodesDown: prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_signal_nodes_down_total",
			Help: "SFU nodes declared dead (announcements stopped, or a controller said so)."}),
	}
	for _, r := range []string{RejoinNodeFailed, RejoinDrain} {
		m.rejoins.WithLabelValues(r)
	}
	for _, e := range []string{"ws", "token", "api"} {
		m.originRefused.WithLabelValues(e) // exported as 0 before the first
	}
	for _, c := range []prometheus.Collector{m.connections, m.active, m.messages, m.badMessages, m.tokenRejected,
		m.rateLimited, m.dropped, m.nodeErrors, m.demoTokens, m.placements, m.joinTimeouts, m.originRefused, m.rejoins, m.nodesDown} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
