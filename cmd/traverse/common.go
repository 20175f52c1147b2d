package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/logging"
)

// common holds the options every server role shares.
type common struct {
	Config string         `yaml:"-"`
	Admin  string         `yaml:"admin"`
	Log    logging.Config `yaml:"log"`
	// Pprof mounts net/http/pprof on the admin listener (off by default:
	// profiles reveal internals and cost CPU while taken).
	Pprof bool `yaml:"pprof"`
	// CheckConfig stops after loading the configuration (file, environment,
	// flags), reporting what is wrong or that it loaded.
	CheckConfig bool `yaml:"-"`
}

// errConfigChecked ends a command run with --check-config whose
// configuration loaded: main exits 0.
var errConfigChecked = errors.New("configuration loaded")

func (c *common) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Config, "config", "", "YAML configuration `file`; its keys are the flag names (env TRAVERSE_CONFIG)")
	fs.StringVar(&c.Admin, "admin", c.Admin, "admin HTTP listener `host:port` serving /metrics, /healthz and /readyz (empty disables it)")
	fs.StringVar(&c.Log.Format, "log-format", c.Log.Format, "log format: text or json")
	fs.StringVar(&c.Log.Level, "log-level", c.Log.Level, "log level: debug, info, warn or error")
	fs.IntVar(&c.Log.MaxValue, "log-max-value", c.Log.MaxValue, "longest log value (and message) in `bytes`; longer ones are cut and marked (0: 256, negative: no limit)")
	fs.IntVar(&c.Log.Burst, "log-burst", c.Log.Burst, "log records of one level and message written per --log-interval; the rest are counted and summarised (0: 10, negative: no limit)")
	fs.DurationVar(&c.Log.Interval, "log-interval", c.Log.Interval, "window of --log-burst (0: 1s)")
	fs.BoolVar(&c.Pprof, "pprof", c.Pprof, "serve net/http/pprof under /debug/pprof/ on the admin listener")
	fs.BoolVar(&c.CheckConfig, "check-config", false, "load the configuration (--config file, environment, flags), report an unknown key or bad value, and exit")
}

// flagSetMade, when set (by the doc test), sees every flag set a command
// makes, so that a documented command line can be checked against it.
var flagSetMade func(*flag.FlagSet)

// newFlagSet returns a flag set whose usage names the command and summary.
func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("traverse "+name, flag.ContinueOnError)
	if flagSetMade != nil {
		flagSetMade(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: traverse %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// load parses args into cfg (see package config) and builds the logger.
func load(fs *flag.FlagSet, args []string, cfg any, c *common) ([]string, *slog.Logger, error) {
	rest, err := config.Load(fs, args, cfg)
	if err != nil {
		return nil, nil, err
	}
	if c.CheckConfig {
		return nil, nil, errConfigChecked
	}
	log, err := logging.New(os.Stderr, c.Log)
	if err != nil {
		return nil, nil, err
	}
	return rest, log, nil
}

// loadFlags is load for a command that takes no arguments besides its
// flags.
func loadFlags(fs *flag.FlagSet, args []string, cfg any, c *common) (*slog.Logger, error) {
	rest, log, err := load(fs, args, cfg, c)
	if err == nil && len(rest) > 0 {
		err = fmt.Errorf("unexpected arguments: %q", rest)
	}
	return log, err
}

// runAlone runs one role as a process of its own: start makes its runner
// with the process's admin server, which serves beside it.
func runAlone(ctx context.Context, log *slog.Logger, c *common, start func(adm *admin.Server) (runner, error)) error {
	adm := admin.New(log)
	run, err := start(adm)
	if err != nil {
		return err
	}
	return runWithAdmin(ctx, log, adm, c, run)
}

// runner is a role's main loop: it serves until ctx is done, then releases
// everything it holds and returns.
type runner func(ctx context.Context) error

// runThenClose is the runner of a role of the one role shape: Run until ctx
// is done, then Close.
func runThenClose(r interface {
	Run(context.Context) error
	Close() error
}) runner {
	return func(ctx context.Context) error {
		err := r.Run(ctx)
		_ = r.Close()
		return err
	}
}

// closeWhenDone is the runner of what serves from its start (the embedded
// bus): it is closed when ctx is done.
func closeWhenDone(c io.Closer) runner {
	return func(ctx context.Context) error {
		<-ctx.Done()
		return c.Close()
	}
}

// runAll runs the runners until ctx is done or one fails, then stops them
// one at a time in the reverse of their order, waiting for each, so that a
// role stops before the roles it depends on (in serve, the bus stops last).
// The whole shutdown takes at most shutdownGrace.
func runAll(ctx context.Context, log *slog.Logger, runners ...runner) error {
	failed, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	errs := make([]error, len(runners))
	cancels := make([]context.CancelFunc, len(runners))
	dones := make([]chan struct{}, len(runners))
	for i, r := range runners {
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		cancels[i], dones[i] = cancel, make(chan struct{})
		go func() {
			defer close(dones[i])
			if err := r(rctx); err != nil && !errors.Is(err, context.Canceled) {
				errs[i] = err
				fail(err)
			}
		}()
	}
	<-failed.Done()
	log.Info("shutting down")
	deadline := time.After(shutdownGrace)
	for i := len(runners) - 1; i >= 0; i-- {
		cancels[i]()
		select {
		case <-dones[i]:
		case <-deadline:
			for _, c := range cancels {
				c()
			}
			return errors.New("shutdown took longer than 5s")
		}
	}
	return errors.Join(errs...)
}

const shutdownGrace = 5 * time.Second

// runWithAdmin registers the logger's counters (traverse_log_*), binds the
// admin listener c.Admin (with pprof when c.Pprof), then runs it and the roles' runners until ctx is done (see runAll). The
// runners hold sockets already: if the admin listener cannot bind, they are
// stopped and released before the error returns.
func runWithAdmin(ctx context.Context, log *slog.Logger, a *admin.Server, c *common, runners ...runner) error {
	if c.Pprof {
		a.EnableProfiling()
	}
	err := logging.Register(log, a.Registry)
	if err == nil {
		err = a.Listen(c.Admin)
	}
	if err != nil {
		stopped, cancel := context.WithCancel(ctx)
		cancel()
		_ = runAll(stopped, log, runners...)
		return err
	}
	return runAll(ctx, log, append(runners, a.Run)...)
}

// bindLoopbackFlag registers a role's flag that allows loopback addresses
// (for local tests); serve, the local demo, turns it on by default and its
// help says so.
func bindLoopbackFlag(fs *flag.FlagSet, name string, p *bool, help string, serve bool) {
	if serve {
		help += "; ON by default in serve only, because serve is the local demo: turn it off for anything else"
	}
	fs.BoolVar(p, name, *p, help)
}
