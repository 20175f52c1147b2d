package distribute

import "github.com/prometheus/client_golang/prometheus"

// metrics are one server's counters, registered in its own registry.
type metrics struct {
	in, inBytes, out, outBytes prometheus.Counter
	feedback                   prometheus.Counter
	drops                      [numDrops]prometheus.Counter
	sendDrops                  prometheus.Counter
	removed                    [numRemovals]prometheus.Counter
	unreachable                prometheus.Counter
	syncErrors                 prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, t *Table, path string) (*metrics, error) {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "traverse_distribute_" + name, Help: help})
	}
	m := &metrics{
		in:          c("packets_in_total", "Media datagrams received for a stream and distributed."),
		inBytes:     c("bytes_in_total", "Bytes of the media datagrams distributed."),
		out:         c("packets_out_total", "Copies queued to receivers (datagrams in x receivers)."),
		outBytes:    c("bytes_out_total", "Bytes of the copies queued to receivers."),
		feedback:    c("receiver_rtcp_total", "RTCP datagrams from receivers (keep-alive; not forwarded)."),
		sendDrops:   c("send_dropped_total", "Copies the kernel refused to send (full socket buffer, unreachable)."),
		unreachable: c("icmp_unreachable_total", "ICMP port unreachable errors for receiver addresses."),
		syncErrors:  c("kernel_sync_errors_total", "Failed updates of the kernel path's table (the stream stays where it was served)."),
	}
	drops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "traverse_distribute_dropped_total",
		Help: "Datagrams received and dropped, by reason: not_media (not RTP/RTCP), no_stream (no entry for the port and SSRC), source (a sender other than the stream's).",
	}, []string{"reason"})
	for i := range m.drops {
		m.drops[i] = drops.WithLabelValues(dropNames[i])
	}
	removed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "traverse_distribute_receivers_removed_total",
		Help: "Receivers removed because they stopped answering, by reason: unreachable (ICMP port unreachable, no RTCP since, for --unreachable-timeout) or rtcp_silence (no RTCP for --rtcp-timeout).",
	}, []string{"reason"})
	for i := range m.removed {
		m.removed[i] = removed.WithLabelValues(removalNames[i])
	}
	streams := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "traverse_distribute_streams", Help: "Streams in the table."},
		func() float64 { s, _ := t.Counts(); return float64(s) })
	receivers := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "traverse_distribute_receivers", Help: "Receivers in the table, all streams."},
		func() float64 { _, r := t.Counts(); return float64(r) })
	pathInfo := prometheus.NewGauge(prometheus.GaugeOpts{Name: "traverse_distribute_path_info",
		Help:        "The data path serving the table (1 for the one in use): userspace (batched recvmmsg/sendmmsg) or ebpf (tc, in the kernel).",
		ConstLabels: prometheus.Labels{"path": path}})
	pathInfo.Set(1)
	for _, col := range []prometheus.Collector{pathInfo, m.in, m.inBytes, m.out, m.outBytes, m.feedback, m.sendDrops, m.unreachable, m.syncErrors, drops, removed, streams, receivers} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// add moves a loop's batch counters into the metrics and clears them.
func (m *metrics) add(c *counts) {
	if c.in > 0 {
		m.in.Add(float64(c.in))
		m.inBytes.Add(float64(c.inBytes))
		m.out.Add(float64(c.out))
		m.outBytes.Add(float64(c.outBytes))
	}
	if c.feedback > 0 {
		m.feedback.Add(float64(c.feedback))
	}
	for i, d := range c.drops {
		if d > 0 {
			m.drops[i].Add(float64(d))
		}
	}
	if c.sendDrops > 0 {
		m.sendDrops.Add(float64(c.sendDrops))
	}
	*c = counts{}
}
