package mediaproxy

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

func (p *Proxy) register(reg prometheus.Registerer) error {
	counter := func(name, help string, labels prometheus.Labels, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "traverse", Subsystem: "mediaproxy", Name: name, Help: help, ConstLabels: labels,
		}, func() float64 { return float64(v.Load()) })
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "traverse", Subsystem: "mediaproxy", Name: name, Help: help,
		}, f)
	}
	c := &p.c
	const pk = "Packets forwarded in user space."
	const dr = "Packets dropped, by reason."
	cs := []prometheus.Collector{
		counter("packets_total", pk, prometheus.Labels{"proto": "rtp", "dir": "to_inside"}, &c.RTPIn),
		counter("packets_total", pk, prometheus.Labels{"proto": "rtp", "dir": "to_outside"}, &c.RTPOut),
		counter("packets_total", pk, prometheus.Labels{"proto": "rtcp", "dir": "to_inside"}, &c.RTCPIn),
		counter("packets_total", pk, prometheus.Labels{"proto": "rtcp", "dir": "to_outside"}, &c.RTCPOut),
		counter("bytes_total", "Bytes forwarded in user space.", prometheus.Labels{"dir": "to_inside"}, &c.BytesIn),
		counter("bytes_total", "Bytes forwarded in user space.", prometheus.Labels{"dir": "to_outside"}, &c.BytesOut),
		counter("drops_total", dr, prometheus.Labels{"reason": "unknown_ssrc"}, &c.DropUnknownSSRC),
		counter("drops_total", dr, prometheus.Labels{"reason": "malformed"}, &c.DropMalformed),
		counter("drops_total", dr, prometheus.Labels{"reason": "no_peer"}, &c.DropNoPeer),
		counter("drops_total", dr, prometheus.Labels{"reason": "not_from_server"}, &c.DropNotServer),
		counter("drops_total", dr, prometheus.Labels{"reason": "not_latched"}, &c.DropNotLatched),
		counter("drops_total", dr, prometheus.Labels{"reason": "refused_source"}, &c.DropRefusedSource),
		counter("refused_total", "Media addresses named in signaling that the proxy refused, by reason.", prometheus.Labels{"reason": "policy"}, &c.RefusedPolicy),
		counter("refused_total", "Media addresses named in signaling that the proxy refused, by reason.", prometheus.Labels{"reason": "own"}, &c.RefusedOwn),
		counter("drops_total", dr, prometheus.Labels{"reason": "write_error"}, &c.DropWriteError),
		counter("ssrc_latched_total", "SSRCs learnt by latching a stream without a=ssrc.", nil, &c.Latched),
		counter("ssrc_changes_total", "New SSRCs accepted from a source already latched to a stream.", nil, &c.SSRCChanges),
		counter("timeouts_total", "Calls ended because media stopped.", nil, &c.Timeouts),
		counter("offloads_total", "Flows moved into the kernel.", nil, &c.Offloads),
		counter("offload_errors_total", "Flows the kernel refused; they stay in user space.", nil, &c.OffloadErrors),
		gauge("kernel_packets", "Packets the kernel forwarded for the flows offloaded now (rule counters).",
			func() float64 { return float64(c.KernelPackets.Load()) }),
		gauge("streams", "Media streams held.", func() float64 { return float64(p.Streams()) }),
		gauge("inside_ports_in_use", "Inside RTP/RTCP port pairs allocated.", func() float64 { return float64(p.PortsInUse()) }),
	}
	for _, x := range cs {
		if err := reg.Register(x); err != nil {
			return err
		}
	}
	return nil
}
