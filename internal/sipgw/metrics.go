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
		counter("rejected_total", rj, prometheus.Labels{"code": "483", "reason": "too_many_hops"}, &c.TooManyHops),
		counter("rejected_total", rj, prometheus.Labels{"code": "503", "reason": "call_rate"}, &c.CallRateLimited),
		counter("rejected_total", rj, prometheus.Labels{"code": "503", "reason": "source_streams"}, &c.SourceStreams),
		counter("rejected_total", rj, prometheus.Labels{"code": "481", "reason": "no_dialog"}, &c.NoDialog),
		counter("rejected_total", rj, prometheus.Labels{"code": "481", "reason": "dialog_mismatch"}, &c.DialogMismatch),
		counter("rejected_total", rj, prometheus.Labels{"code": "491", "reason": "offer_pending"}, &c.Pending),
		counter("answers_suppressed_total", "Refusals left unanswered because the source exceeded its answer rate.", nil, &c.AnswersSuppressed),
		counter("setup_timeouts_total", "Calls ended because their 2xx or its ACK did not come within the setup or ACK deadline.", nil, &c.SetupTimeouts),
		counter("calls_started_total", "Calls set up through the gateway.", nil, &c.CallsStarted),
		counter("calls_ended_total", "Calls ended (BYE, CANCEL, failure or media timeout).", nil, &c.CallsEnded),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "traverse", Subsystem: "sipgw", Name: "calls", Help: "Calls held."},
			func() float64 { return float64(g.Calls()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "traverse", Subsystem: "sipgw", Name: "registrations", Help: "Outside clients registered through the gateway."},
			func() float64 { return float64(g.Registrations()) }),
	}
	for i := range numUnparse {
		cs = append(cs, counter("unparseable_total", "Incoming SIP messages that did not parse, by reason (dropped unanswered).",
			prometheus.Labels{"reason": unparseNames[i]}, &c.Unparseable[i]))
	}
	for _, x := range cs {
		if err := reg.Register(x); err != nil {
			return err
		}
	}
	return nil
}
