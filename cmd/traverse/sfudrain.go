package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/sfu"
)

// sfuDrainConfig is "traverse sfu drain"'s configuration.
type sfuDrainConfig struct {
	common           `yaml:",inline"`
	natsClientConfig `yaml:",inline"`
	Period           time.Duration `yaml:"period"`
}

// runSFUDrain asks a node over the bus to drain (docs/failover.md). The
// request goes on the node's request subject, which only signal-role
// credentials may publish on: the operator uses signal.creds of
// "traverse bus --creds-dir"; a node's credential is refused here, and
// would be by the bus.
func runSFUDrain(ctx context.Context, args []string) error {
	cfg := sfuDrainConfig{}
	fs := newFlagSet("sfu drain", "sfu drain --nats URL --nats-creds SIGNAL.creds [--period D] NODE")
	cfg.common.flags(fs)
	bindNATSClientFlags(fs, "", &cfg.natsClientConfig, "NATS server `URL`s, comma separated, of the node's bus")
	fs.DurationVar(&cfg.Period, "period", 0, "spread the sessions' rejoin messages over this `duration` (0: the node's --drain-period)")
	rest, log, err := load(fs, args, &cfg, &cfg.common)
	if err != nil {
		return err
	}
	if len(rest) != 1 || !bus.ValidName(rest[0]) {
		return &exitError{code: 2, err: errors.New("usage: traverse sfu drain [flags] NODE")}
	}
	if cfg.Period < 0 || cfg.Period > bus.MaxDrainPeriod {
		return fmt.Errorf("--period must be 0-%v", bus.MaxDrainPeriod)
	}
	if cfg.NATSCreds != "" {
		if id, err := bus.LoadIdentity(cfg.NATSCreds); err == nil && id.Role != bus.RoleSignal {
			return fmt.Errorf("--nats-creds %s is a %s credential: draining takes the signal credential (signal.creds)", cfg.NATSCreds, id.Role)
		}
	}
	busCfg := cfg.busClient("sfu drain")
	if len(busCfg.URLs) == 0 {
		return errors.New("--nats is required")
	}
	bc, err := bus.Connect(busCfg, log)
	if err != nil {
		return err
	}
	defer bc.Close()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = bc.Request(rctx, rest[0], bus.Request{Type: bus.RequestDrain, Drain: &bus.DrainRequest{PeriodMillis: cfg.Period.Milliseconds()}})
	if err != nil {
		return fmt.Errorf("drain %s: %w", rest[0], err)
	}
	fmt.Fprintf(os.Stdout, "node %s is draining\n", rest[0])
	return nil
}

// drainOnSIGUSR1 drains s when the process gets SIGUSR1, until ctx is
// done: what a service manager's reload action or "kill -USR1" sends.
func drainOnSIGUSR1(ctx context.Context, s *sfu.Server) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1)
	defer signal.Stop(ch)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			s.Drain(0)
		}
	}
}

// errDraining is /readyz's answer while the node drains; errDrained ends
// the process once a drain has moved every session (unless --drain-stay;
// in serve it stops serve, whose one node it is).
var (
	errDraining = errors.New("draining")
	errDrained  = errors.New("sfu drained: every session moved")
)

// registerBusCounters exports a role's bus client counters: the messages
// it dropped as malformed or forged (a rejoin with an unknown reason, an
// announcement naming another node, a drain with a bad period, ...) and
// what the server refused it. role labels them (serve has several).
func registerBusCounters(reg prometheus.Registerer, role string, bc *bus.Client) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "traverse_bus_client_bad_messages_total",
			Help:        "Bus messages this role dropped as malformed or forged (and counted, never acted on).",
			ConstLabels: prometheus.Labels{"role": role}}, func() float64 { return float64(bc.BadMessages()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "traverse_bus_client_refused_total",
			Help:        "Publications or subscriptions of this role the bus server refused (permissions).",
			ConstLabels: prometheus.Labels{"role": role}}, func() float64 { return float64(bc.Refused()) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
