package relay

import "github.com/prometheus/client_golang/prometheus"

// Why a frame or message was dropped.
const (
	dropShort         = iota // not a relay frame, or cut short
	dropUnknownPeer          // the sender is no configured peer
	dropAddress              // from another address than the sender's
	dropAuth                 // the tag does not verify (forged, other key)
	dropReplay               // counter seen already or too old
	dropEpoch                // an epoch the link holds no key for
	dropMalformed            // a body or relay header that does not parse
	dropHopLimit             // the hop limit ran out before a destination
	dropNoRoute              // no route to a destination
	dropLoop                 // a message back at its own source node
	dropSendQueue            // the send batch was full
	dropBlocked              // to or from a peer whose link is blocked (Block)
	dropClientToken          // a client hello without a valid token
	dropClientRoom           // a hello for another room than its token's
	dropClientRights         // a hello asking for what its token does not grant
	dropClientLimit          // MaxClients reached
	dropClientRate           // over the per-source client frame or hello rate
	dropClientUnknown        // a client message from an address no hello bound
	dropClientRefused        // the SFU refused the client's tracks
	dropDuplicate            // a media message this node accepted already (its end-to-end sequence window)
	dropClientTrack          // a client's layer choice for a track it was not given or a layer it lacks
	dropVersion              // a relay frame of another protocol version (relaywire.ErrVersion)
	numDrops
)

var dropNames = [numDrops]string{"short", "unknown_peer", "address", "auth", "replay", "epoch", "malformed",
	"hop_limit", "no_route", "loop", "send_queue", "blocked",
	"client_token", "client_room", "client_rights", "client_limit", "client_rate", "client_unknown", "client_refused", "duplicate",
	"client_track", "version"}

type metrics struct {
	drops       [numDrops]prometheus.Counter
	forwarded   prometheus.Counter
	delivered   prometheus.Counter
	sent        prometheus.Counter
	retransmit  prometheus.Counter
	recovered   prometheus.Counter
	parity      prometheus.Counter
	refused     prometheus.Counter
	lost        prometheus.Counter
	late        prometheus.Counter
	dups        prometheus.Counter
	clients     prometheus.Gauge
	clientMedia prometheus.Counter
	clientSent  prometheus.Counter
	// seqResets and seqUntracked: the end-to-end sequence windows
	// (dedupe.go) restarted for a source's restart, and messages that
	// passed unchecked with MaxSeqStreams windows held.
	seqResets    prometheus.Counter
	seqUntracked prometheus.Counter
	coalesced    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	drop := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "traverse_relay_dropped_total",
		Help: "Relay frames or messages dropped, by reason.",
	}, []string{"reason"})
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &metrics{
		forwarded:   c("traverse_relay_forwarded_total", "Messages forwarded to a next hop (once per next hop)."),
		delivered:   c("traverse_relay_delivered_total", "Messages delivered to this node's SFU."),
		sent:        c("traverse_relay_sent_total", "Messages this node sent into the cascade (once per next hop)."),
		retransmit:  c("traverse_relay_retransmits_total", "Messages sent again for a neighbour's NACK."),
		recovered:   c("traverse_relay_fec_recovered_total", "Messages rebuilt from FEC parity."),
		parity:      c("traverse_relay_fec_parity_total", "FEC parity frames sent."),
		refused:     c("traverse_relay_nack_refused_total", "NACKed messages not sent again: out of the send history or sent again max-retransmits times already."),
		lost:        c("traverse_relay_lost_total", "Messages a link never repaired: NACKed max-nacks times, more gaps than max-missing, or a jump."),
		late:        c("traverse_relay_late_total", "Messages older than the receive window, dropped."),
		dups:        c("traverse_relay_duplicates_total", "Messages received twice (a retransmission after FEC repaired it), dropped."),
		clients:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "traverse_relay_clients", Help: "Relay clients bound to an address."}),
		clientMedia: c("traverse_relay_client_media_total", "Media packets relay clients published."),
		seqResets: c("traverse_relay_seq_resets_total",
			"End-to-end sequence windows restarted: a message far below its stream's window (the source restarted its numbering)."),
		seqUntracked: c("traverse_relay_seq_untracked_total",
			"Media messages delivered without a duplicate check: the node held the most sequence windows it keeps."),
		clientSent: c("traverse_relay_client_sent_total", "Messages sent to relay clients that receive (media, track announcements)."),
		coalesced:  c("traverse_relay_coalesced_reads_total", "Reads of the relay port that held several frames of one sender the kernel coalesced (UDP GRO); each frame is opened and checked on its own."),
	}
	for i := range m.drops {
		m.drops[i] = drop.WithLabelValues(dropNames[i])
	}
	if reg != nil {
		for _, col := range []prometheus.Collector{drop, m.forwarded, m.delivered, m.sent, m.retransmit, m.recovered, m.parity, m.refused, m.lost, m.late, m.dups, m.clients, m.clientMedia, m.seqResets, m.seqUntracked, m.clientSent, m.coalesced} {
			if err := reg.Register(col); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
