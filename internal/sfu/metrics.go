package sfu

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/sfu/batchconn"
)

// metrics are one node's counters; each Server has its own.
type metrics struct {
	joins, leaves, connected, offers  prometheus.Counter
	badSDP, badRTP                    prometheus.Counter
	pliForwarded, pliThrottled, nacks prometheus.Counter
	nacksAnswered, nacksMissed        prometheus.Counter
	nacksThrottled                    prometheus.Counter
	layerSwitches, dataMessages       prometheus.Counter
	unsupportedTracks, glare          prometheus.Counter
	ownActive, ownFallbacks           prometheus.Counter
	ownDrops, ownReports              prometheus.Counter
	ownRTCPSent                       prometheus.Counter
	ownRTCPErrors                     *prometheus.CounterVec
	subscriberLoss                    prometheus.Histogram
	recvSessions, recvTaken           prometheus.Counter
	recvReplays, recvSlowDrops        prometheus.Counter
	recvErrors                        *prometheus.CounterVec
	rtcpTaken, rtcpIgnored            prometheus.Counter
	rtcpErrors                        *prometheus.CounterVec
	twccFeedback, twccBad             prometheus.Counter
	subscriberEstimate                prometheus.Histogram
	drains, drainRejoins, drainForced prometheus.Counter
}

// newMetrics declares the node's metrics and registers them with reg
// (nil: unregistered). It is one long table of declarations on purpose:
// every name and help text of the node reads as one list.
func newMetrics(s *Server, reg prometheus.Registerer) *metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "traverse", Subsystem: "sfu", Name: name, Help: help})
	}
	byReason := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "traverse", Subsystem: "sfu", Name: name, Help: help},
			[]string{"reason"})
	}
	m := &metrics{
		joins:         c("joins_total", "Sessions created."),
		leaves:        c("leaves_total", "Sessions ended."),
		drains:        c("drains_total", "Drains started (traverse sfu drain, SIGUSR1, a drain request)."),
		drainRejoins:  c("drain_rejoins_total", "Sessions asked to rejoin elsewhere by a drain."),
		drainForced:   c("drain_forced_leaves_total", "Sessions still on the node when a drain's period and grace ended, closed by the node."),
		connected:     c("connected_total", "Peer connections that reached connected."),
		offers:        c("offers_total", "Renegotiation offers sent to clients."),
		badSDP:        c("bad_sdp_total", "Offers or answers refused as malformed."),
		badRTP:        c("bad_rtp_total", "Incoming RTP packets that did not parse."),
		pliForwarded:  c("pli_forwarded_total", "Keyframe requests sent to publishers."),
		pliThrottled:  c("pli_throttled_total", "Keyframe requests dropped by the per-layer throttle."),
		nacks:         c("nacks_received_total", "Packets subscribers asked to be retransmitted."),
		nacksAnswered: c("nacks_answered_total", "Packets retransmitted to subscribers from the track caches."),
		nacksMissed:   c("nacks_missed_total", "Retransmission requests the caches could not answer (too old, other layer)."),
		nacksThrottled: c("nacks_throttled_total",
			"Retransmission requests dropped: the packet was resent to the same subscriber less than 50 ms before."),
		layerSwitches: c("layer_switches_total", "Simulcast layer switches done for subscribers."),
		dataMessages:  c("data_messages_total", "Data-channel messages relayed."),
		unsupportedTracks: c("unsupported_tracks_total",
			"Subscribed tracks dropped because the subscriber's negotiated codecs lack the track's codec."),
		ownActive: c("fast_path_sessions_total", "Peer connections whose forwarded RTP takes the own data path (own SRTP and socket writes)."),
		ownFallbacks: c("fast_path_fallbacks_total",
			"Peer connections left on pion's write path with the own data path on (node not DTLS server, unknown suite or profile, ICE over TCP)."),
		ownDrops: c("fast_path_drops_total",
			"Own-path RTP packets dropped: larger than the MTU, no UDP destination (TCP pair), or not encryptable."),
		ownReports:  c("fast_path_sender_reports_total", "RTCP sender reports sent for own-path streams."),
		ownRTCPSent: c("fast_rtcp_sent_total", "SRTCP datagrams the node sealed and sent itself (--fast-rtcp-send), not through pion."),
		ownRTCPErrors: byReason("fast_rtcp_errors_total",
			"RTCP of own-send sessions not sent, by reason (no-udp: the pair is over TCP; seal; marshal; write)."),
		glare:        c("glare_total", "Client offers that crossed a node offer (the node withdrew its own)."),
		recvSessions: c("fast_receive_sessions_total", "Peer connections whose publishers' RTP the own receive path takes."),
		recvTaken:    c("fast_receive_packets_total", "Publishers' RTP packets decrypted and forwarded by the own receive path (not pion's)."),
		recvReplays:  c("fast_receive_replays_total", "Publishers' RTP packets the own receive path dropped as replays (RFC 3711 section 3.3.2)."),
		recvSlowDrops: c("fast_receive_slow_drops_total",
			"Intercepted packets not queued for subscribers on pion's write path (ICE-TCP, no own-path keys): queue full or track closed."),
		recvErrors: byReason("fast_receive_errors_total",
			"Publishers' RTP packets of registered streams the own receive path handed back to pion, by reason (auth: tag did not verify; short; header; decrypt)."),
		rtcpTaken: c("fast_rtcp_packets_total", "Clients' SRTCP packets decrypted and acted on by the own RTCP path (not pion's)."),
		rtcpIgnored: c("fast_rtcp_ignored_total",
			"Packets of clients' compound RTCP the own RTCP path has no use for (SDES, BYE, XR, APP, ...)."),
		rtcpErrors: byReason("fast_rtcp_receive_errors_total",
			"Clients' SRTCP packets the own RTCP path did not act on, by reason (auth: tag did not verify, handed to pion; short: handed to pion; decrypt: other decryption error, handed to pion; replay: dropped; parse: authenticated but not RTCP, dropped)."),
		subscriberLoss: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "traverse", Subsystem: "sfu",
			Name: "subscriber_loss_fraction", Help: "Fraction lost in subscribers' receiver reports.",
			Buckets: []float64{0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5}}),
		twccFeedback: c("subscriber_twcc_feedback_total", "Subscribers' transport-cc feedback packets taken into their bandwidth estimates (package gcc)."),
		twccBad:      c("subscriber_twcc_feedback_bad_total", "Subscribers' transport-cc feedback packets refused as inconsistent (statuses without deltas, unknown symbols, deltas out of range)."),
		subscriberEstimate: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "traverse", Subsystem: "sfu",
			Name: "subscriber_estimate_bps", Help: "Subscribers' downlink estimates (the lower of REMB and the transport-cc estimate) at each layer choice, every 500 ms per subscriber with one.",
			Buckets: []float64{100e3, 250e3, 500e3, 1e6, 2e6, 5e6, 10e6, 25e6, 50e6}}),
	}
	for _, r := range rtcpErrorReasons {
		m.ownRTCPErrors.WithLabelValues(r) // exported as 0 before the first
	}
	if reg == nil {
		return m
	}
	// counterFunc and gaugeFunc read a value the node keeps itself at each
	// scrape.
	counterFunc := func(name, help string, f func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "traverse", Subsystem: "sfu", Name: name, Help: help},
			func() float64 { return float64(f()) })
	}
	gaugeFunc := func(name, help string, f func() int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "traverse", Subsystem: "sfu", Name: name, Help: help},
			func() float64 { return float64(f()) })
	}
	reg.MustRegister(m.recvSessions, m.recvTaken, m.recvReplays, m.recvErrors, m.recvSlowDrops,
		m.rtcpTaken, m.rtcpIgnored, m.rtcpErrors,
		counterFunc("rtp_received_pion_total", "Publishers' RTP packets that came through pion's receive path.", s.pionReceived.Load),
		m.ownActive, m.ownFallbacks, m.ownDrops, m.ownReports, m.ownRTCPSent, m.ownRTCPErrors, m.unsupportedTracks, m.glare, m.joins, m.leaves, m.connected, m.offers, m.badSDP, m.badRTP, m.pliForwarded,
		m.pliThrottled, m.nacks, m.nacksAnswered, m.nacksMissed, m.nacksThrottled, m.layerSwitches, m.dataMessages, m.subscriberLoss,
		m.twccFeedback, m.twccBad, m.subscriberEstimate, m.drains, m.drainRejoins, m.drainForced,
		counterFunc("rtp_forwarded_total", "RTP packets sent to subscribers.", s.forwarded.Load),
		counterFunc("rtp_received_total", "RTP packets received from publishers.", s.received.Load),
		counterFunc("udp_batched_writes_total", "Datagrams sent through the batched socket (--data-path own or pion-batched).",
			func() uint64 { return s.batchStats().Writes }),
		counterFunc("udp_write_batches_total", "Send system calls of the batched socket (sendmmsg batches and single sendto).",
			func() uint64 { return s.batchStats().Batches }),
		counterFunc("udp_write_drops_total", "Datagrams the batched socket dropped (larger than 1500 bytes).",
			func() uint64 { return s.batchStats().Drops }),
		// The node's summed rtpfeedback counters.
		counterFunc("feedback_nacks_total", "NACK packets sent to publishers (internal/rtpfeedback).",
			func() uint64 { return s.feedback.Stats().NACKs }),
		counterFunc("feedback_nacked_total", "Sequence numbers NACKed to publishers.",
			func() uint64 { return s.feedback.Stats().NACKed }),
		counterFunc("feedback_receiver_reports_total", "Receiver report packets sent to publishers.",
			func() uint64 { return s.feedback.Stats().Reports }),
		counterFunc("feedback_twcc_total", "Transport-wide congestion control feedback packets sent to publishers.",
			func() uint64 { return s.feedback.Stats().TWCC }),
		counterFunc("feedback_sender_reports_total", "Publishers' sender reports seen (LSR/DLSR of the receiver reports).",
			func() uint64 { return s.feedback.Stats().SenderReport }),
		counterFunc("feedback_bad_rtcp_total", "Publishers' RTCP packets the sender report scan refused.",
			func() uint64 { return s.feedback.Stats().BadRTCP }),
		counterFunc("feedback_write_errors_total", "Feedback RTCP writes that failed.",
			func() uint64 { return s.feedback.Stats().WriteErrors }),
		counterFunc("feedback_twcc_dropped_total", "Transport-cc arrivals dropped from a full queue (never expected).",
			func() uint64 { return s.feedback.Stats().TWCCDropped }),
		gaugeFunc("sessions", "Live sessions.", s.Sessions),
		gaugeFunc("rooms", "Rooms with a session on this node.", func() int { return len(s.roomList()) }),
	)
	return m
}

// batchStats are the batched socket's counters (zero without one).
func (s *Server) batchStats() batchconn.Stats {
	b := s.corkable()
	if b == nil {
		return batchconn.Stats{}
	}
	return b.Stats()
}
