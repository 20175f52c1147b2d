package turn

import "github.com/prometheus/client_golang/prometheus"

// metrics are one server's counters; two servers in one process keep their
// own (nothing is registered globally).
type metrics struct {
	allocations prometheus.Gauge
	permissions prometheus.Gauge
	channels    prometheus.Gauge

	toPeerPackets, toPeerBytes     prometheus.Counter
	toClientPackets, toClientBytes prometheus.Counter

	requests     *prometheus.CounterVec // by method and result
	authFailures *prometheus.CounterVec // by reason
	refusedPeers prometheus.Counter
	quotaHits    *prometheus.CounterVec // by quota
	limited      *prometheus.CounterVec // rate limits, by limit
	timeouts     *prometheus.CounterVec // stream connections closed, by reason
	drops        *prometheus.CounterVec // by reason
	bad          *prometheus.CounterVec // malformed input by transport
	streamConns  prometheus.Gauge
	// RFC 6062: peer data connections open, ConnectionBind timeouts,
	// failed Connects.
	tcpConns                        prometheus.Gauge
	reservations                    prometheus.Gauge // ports held for RESERVATION-TOKEN
	tcpTimeouts, tcpConnectFailures prometheus.Counter

	offloadFlows                                 prometheus.Gauge
	offloadErrors                                prometheus.Counter
	offloadToPeerPackets, offloadToPeerBytes     prometheus.Counter
	offloadToClientPackets, offloadToClientBytes prometheus.Counter

	// Pre-resolved children for the data path.
	dropNoPermission, dropNoChannel, dropNoAllocation, dropBandwidth, dropQueueFull, dropSendError prometheus.Counter
	badUDP, badStream                                                                              prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "traverse", "turn"
	m := &metrics{
		allocations: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "allocations", Help: "Allocations open now."}),
		permissions: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "permissions", Help: "Permissions installed now, over all allocations."}),
		channels:    prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "channels", Help: "Channels bound now, over all allocations."}),
		streamConns: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "stream_connections", Help: "TCP and TLS client connections open now."}),
		tcpConns: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "tcp_peer_connections",
			Help: "RFC 6062 peer data connections open now (pending a ConnectionBind or bound)."}),
		reservations: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "reserved_ports",
			Help: "Relay ports held now for a later Allocate with RESERVATION-TOKEN (EVEN-PORT with the R bit; 30 s each)."}),
		tcpTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "tcp_bind_timeouts_total",
			Help: "RFC 6062 peer data connections closed because no ConnectionBind came within 30 s."}),
		tcpConnectFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "tcp_connect_failures_total",
			Help: "RFC 6062 Connect requests answered 447: the connection to the peer failed or timed out."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "STUN/TURN requests answered, by method and result (ok or the error code)."}, []string{"method", "result"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "auth_failures_total",
			Help: "Failed authentications by reason: bad_integrity, unknown_user, expired_credential, lifetime_too_long (REST expiry beyond --rest-max-lifetime), stale_nonce (also a nonce from another 5-tuple), wrong_credentials; requests dropped unanswered: rate_limited (the source's failures for that user name), rate_limited_source (the source's failures over all names)."}, []string{"reason"}),
		refusedPeers: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "refused_peers_total",
			Help: "Permissions, channel bindings and Send indications refused because the peer address is filtered (403)."}),
		quotaHits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "quota_hits_total",
			Help: "Quota events: user and total (486), ports (508), shared (an allocation placed on a shared relay socket), shared_peer (403: a peer another sharer permits), permissions (508: more than 1024 on one allocation), stream_conns (TCP/TLS/DTLS connection refused: total cap), stream_conns_source (refused: the source's cap), offload_bandwidth (an allocation over its bandwidth in the kernel, handed back to user space for 10 s), tcp_conns (RFC 6062: over 128 peer connections on one allocation), reservation (508: RESERVATION-TOKEN unknown, used or expired)."}, []string{"quota"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rate_limited_total",
			Help: "Per-source rate limits hit: unauth_answers (an answer to an unauthenticated request not sent: over --unauth-answer-rate), allocate (486: over --allocation-rate)."}, []string{"limit"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "stream_timeouts_total",
			Help: "TCP, TLS and DTLS client connections closed by the server: auth (no authenticated request within --stream-auth-timeout), idle (no allocation and nothing received for --stream-idle-timeout)."}, []string{"reason"}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "dropped_packets_total",
			Help: "Packets not relayed, by reason."}, []string{"reason"}),
		bad: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "malformed_total",
			Help: "Malformed messages from clients, by transport."}, []string{"transport"}),
	}
	relayed := byDirection(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "relayed_packets_total",
		Help: "Packets relayed, by direction (to_peer, to_client)."}, &m.toPeerPackets, &m.toClientPackets)
	relayedBytes := byDirection(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "relayed_bytes_total",
		Help: "Payload bytes relayed, by direction (to_peer, to_client)."}, &m.toPeerBytes, &m.toClientBytes)
	m.dropNoPermission = m.drops.WithLabelValues("no_permission")
	m.dropNoChannel = m.drops.WithLabelValues("no_channel")
	m.dropNoAllocation = m.drops.WithLabelValues("no_allocation")
	m.dropBandwidth = m.drops.WithLabelValues("bandwidth")
	m.dropQueueFull = m.drops.WithLabelValues("queue_full")
	m.dropSendError = m.drops.WithLabelValues("send_error")
	m.badUDP = m.bad.WithLabelValues("udp")
	m.badStream = m.bad.WithLabelValues("stream")
	m.offloadFlows = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "offload_flows",
		Help: "Channels relayed in the kernel now (--offload ebpf)."})
	m.offloadErrors = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "offload_errors_total",
		Help: "Channels the kernel path refused or failed to install or remove (they stay in user space)."})
	offPackets := byDirection(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "offload_packets_total",
		Help: "Packets relayed in the kernel, by direction (to_peer, to_client); also counted in relayed_packets_total."}, &m.offloadToPeerPackets, &m.offloadToClientPackets)
	offBytes := byDirection(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "offload_bytes_total",
		Help: "Payload bytes relayed in the kernel, by direction (to_peer, to_client); also counted in relayed_bytes_total."}, &m.offloadToPeerBytes, &m.offloadToClientBytes)
	for _, q := range []string{"user", "total", "ports", "shared", "shared_peer", "permissions", "stream_conns", "stream_conns_source", "offload_bandwidth", "tcp_conns", "reservation"} {
		m.quotaHits.WithLabelValues(q)
	}
	for _, l := range []string{"unauth_answers", "allocate"} {
		m.limited.WithLabelValues(l)
	}
	for _, r := range []string{"auth", "idle"} {
		m.timeouts.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.allocations, m.permissions, m.channels, m.streamConns, m.tcpConns, m.tcpTimeouts, m.tcpConnectFailures, m.reservations,
			m.requests, m.authFailures,
			m.refusedPeers, m.quotaHits, m.limited, m.timeouts, m.drops, m.bad, relayed, relayedBytes,
			m.offloadFlows, m.offloadErrors, offPackets, offBytes)
	}
	return m
}

// byDirection makes a counter vector of opts by direction and points
// toPeer and toClient at its two counters (to_peer, to_client).
func byDirection(opts prometheus.CounterOpts, toPeer, toClient *prometheus.Counter) *prometheus.CounterVec {
	v := prometheus.NewCounterVec(opts, []string{"direction"})
	*toPeer, *toClient = v.WithLabelValues("to_peer"), v.WithLabelValues("to_client")
	return v
}
