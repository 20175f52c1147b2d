package stun

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/kfast/stunanswer"
)

// The paths Binding requests are answered on (Config.Offload, the
// traverse_stun_path_info metric).
const (
	OffloadOff  = "off"
	OffloadEBPF = "ebpf"
)

// kernelAnswerer is the kernel path (internal/kfast/stunanswer).
type kernelAnswerer interface {
	Answered() (packets, bytes uint64, err error)
	Close() error
}

type stunAnswerer struct{ *stunanswer.Answerer }

func (a stunAnswerer) Answered() (uint64, uint64, error) {
	c, err := a.Answerer.Answered()
	return c.Packets, c.Bytes, err
}

// offload loads the kernel path on the bound UDP endpoints and registers
// its metrics: the path in use, and the answers the kernel sent (the
// user-space counters do not see them).
func (s *Server) offload() error {
	path := OffloadOff
	if s.cfg.Offload == OffloadEBPF {
		var eps []stunanswer.Endpoint
		if s.ep.rfc5780 {
			for i, a := range s.ep.addrs {
				eps = append(eps, stunanswer.Endpoint{Addr: a, Other: s.ep.addrs[i^3]})
			}
		} else {
			eps = append(eps, stunanswer.Endpoint{Addr: s.ep.addrs[0]})
		}
		a, err := stunanswer.New(stunanswer.Config{NetNS: s.cfg.OffloadNetNS, Interfaces: s.cfg.OffloadInterfaces, Endpoints: eps,
			Rate: s.cfg.Rate, Burst: s.cfg.RateBurst})
		if err != nil {
			return fmt.Errorf("stun: --offload ebpf: %w", err)
		}
		s.kernel = stunAnswerer{a}
		path = OffloadEBPF
	}
	s.log.Info("stun: Binding requests without attributes answered", "path", path)
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "traverse_stun_path_info",
		Help: "Where Binding requests without attributes are answered: ebpf (in the kernel) or off (user space), 1 for the one in use.",
	}, []string{"path"})
	info.WithLabelValues(path).Set(1)
	collectors := []prometheus.Collector{info}
	if k := s.kernel; k != nil {
		collectors = append(collectors, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "traverse_stun_kernel_answers_total",
			Help: "Binding success responses sent by the kernel path (--offload ebpf); they appear in no other counter.",
		}, func() float64 {
			n, _, err := k.Answered()
			if err != nil {
				return 0
			}
			return float64(n)
		}))
	}
	for _, c := range collectors {
		if err := s.cfg.Registerer.Register(c); err != nil {
			return fmt.Errorf("stun: metrics: %w", err)
		}
	}
	return nil
}

// KernelAnswers is how many Binding requests the kernel path answered (0
// without it).
func (s *Server) KernelAnswers() uint64 {
	if s.kernel == nil {
		return 0
	}
	n, _, _ := s.kernel.Answered()
	return n
}

// Path is where Binding requests without attributes are answered:
// OffloadEBPF or OffloadOff.
func (s *Server) Path() string {
	if s.kernel != nil {
		return OffloadEBPF
	}
	return OffloadOff
}

// validateOffload checks the offload settings.
func (c *resolved) validateOffload() error {
	switch c.Offload {
	case "", OffloadOff:
		c.Offload = OffloadOff
		return nil
	case OffloadEBPF:
	default:
		return fmt.Errorf("%w: offload %q (off or ebpf)", ErrConfig, c.Offload)
	}
	if c.Software != "" {
		return fmt.Errorf("%w: --offload ebpf answers without SOFTWARE: leave software empty", ErrConfig)
	}
	if a := c.listen.Addr(); !a.Unmap().Is4() {
		return fmt.Errorf("%w: --offload ebpf needs an IPv4 listen address, not %s", ErrConfig, a)
	}
	return nil
}
