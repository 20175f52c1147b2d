package sipgw

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

func (g *Gateway) register(reg prometheus.Registerer) error {
	counter := func(name, help string, labels prometheus.Labels, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "traverse", Subsystem: "sipgw", Name: name, Help: help, ConstLabels: labels,
		}, func() float64 { return float64(v.Load()) })
	}
	c := &g.c
	const rj = "Requests rejected by the gateway itself, by status."
	cs := []prometheus.Collector{
		counter("requests_total", "SIP requests received (not ACK).", nil, &c.Requests),
		counter("responses_total", "SIP responses relayed.", nil, &c.Responses),
		counter("rejected_total", rj, prometheus.Labels{"code": "400", "reason": "malformed"}, &c.BadRequest),
		counter("rejected_total", rj, prometheus.Labels{"code": "488", "reason": "bad_sdp"}, &c.BadSDP),
		counter("rejected_total", rj, prometheus.Labels{"code": "503", "reason": "rate_limited"}, &c.RateLimited),
		counter("rejected_total", rj, prometheus.Labels{"code": "503", "reason": "no_media_ports"}, &c.NoMedia),
		counter("rejected_total", rj, prometheus.Labels{"code": "404", "reason": "not_registered"}, &c.NotFound),
		counter("calls_started_total", "Calls set up through the gateway.", nil, &c.CallsStarted),
		counter("calls_ended_total", "Calls ended (BYE, CANCEL, failure or media timeout).", nil, &c.CallsEnded),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "traverse", Subsystem: "sipgw", Name: "calls", Help: "Calls held."},
			func() float64 { return float64(g.Calls()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "traverse", Subsystem: "sipgw", Name: "registrations", Help: "Outside clients registered through the gateway."},
			func() float64 { return float64(g.Registrations()) }),
	}
	for _, x := range cs {
		if err := reg.Register(x); err != nil {
			return err
		}
	}
	return nil
}
