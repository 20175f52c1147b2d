package relaynode

import "github.com/prometheus/client_golang/prometheus"

// Why a datagram was dropped.
const (
	dropUnbound   = iota // data from an address no grant bound
	dropNotReady         // data before the other side bound
	dropBandwidth        // over the bandwidth cap (token bucket)
	dropMalformed        // unknown first byte, short frame
	dropBindRate         // binds from one source over --bind-rate
	dropSignature        // grant signature does not verify
	dropExpired          // grant past its expiry
	dropOtherNode        // grant for another node
	dropBadGrant         // grant does not parse
	dropHijack           // a bind for a side bound to another, live address
	dropFull             // a new session over the session cap
	dropSendFail         // the kernel refused the send
	numDrops
)

var dropNames = [numDrops]string{"unbound", "not_ready", "bandwidth", "malformed", "bind_rate", "grant_signature",
	"grant_expired", "grant_other_node", "grant_malformed", "hijack", "sessions_full", "send_failed"}

type metrics struct {
	relayed   prometheus.Counter
	bytes     prometheus.Counter
	binds     prometheus.Counter
	punches   prometheus.Counter
	dropped   [numDrops]prometheus.Counter
	sessions  prometheus.Gauge
	expired   prometheus.Counter
	keepalive prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_relay_" + name, Help: help})
	}
	relayed := counter("datagrams_total", "Datagrams relayed from one peer of a session to the other.")
	bytes := counter("bytes_total", "Bytes relayed (UDP payloads).")
	binds := counter("binds_total", "Peers bound to a session side by a valid grant (first binds and rebinds).")
	punches := counter("punches_total", "Punch datagrams sent to granted peers to open the node's own NAT filter.")
	drop := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_relay_dropped_total",
		Help: "Datagrams dropped, by reason."}, []string{"reason"})
	sessions := prometheus.NewGauge(prometheus.GaugeOpts{Name: "traverse_relay_sessions",
		Help: "Sessions held (one side bound or both)."})
	expired := counter("sessions_expired_total", "Sessions removed after both sides were idle for --session-idle.")
	keep := counter("keepalives_total",
		"STUN binding requests sent from the relay port to keep its NAT mapping and learn its public address.")
	m := &metrics{relayed: relayed, bytes: bytes, binds: binds, punches: punches, sessions: sessions, expired: expired, keepalive: keep}
	for i := range m.dropped {
		m.dropped[i] = drop.WithLabelValues(dropNames[i])
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{relayed, bytes, binds, punches, drop, sessions, expired, keep} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
