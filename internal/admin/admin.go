// Package admin serves a role's operator HTTP endpoints: /metrics in the
// Prometheus exposition format, /healthz (the process is alive) and /readyz
// (every role in the process is ready to take traffic; what a load balancer
// polls).
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/traverse-rtc/traverse/internal/connlimit"
)

// Checker reports whether a role is ready; a non-nil error says why not.
type Checker func() error

// Server is the admin HTTP listener of one process.
type Server struct {
	// Registry holds every metric of the process. Roles register their
	// collectors here; nothing is registered globally.
	Registry *prometheus.Registry

	log *slog.Logger
	mux *http.ServeMux

	mu     sync.Mutex // guards checks and handlers added after start
	checks map[string]Checker

	// Limits cap the admin listener's connections; set them before Listen.
	// Defaults (New): 100 in all, 20 per address: scrapers, load balancer
	// probes and an operator need a handful, and the admin port must not
	// give a flood the descriptors of the process's roles.
	Limits connlimit.Limits

	srv *http.Server
	ln  net.Listener
}

// Default connection caps of the admin listener, and its idle timeout.
const (
	DefaultMaxConns        = 100
	DefaultMaxConnsPerAddr = 20
	idleTimeout            = 30 * time.Second
	maxHeaderBytes         = 16 << 10
)

// New returns an admin server with the Go runtime and process collectors
// registered.
func New(log *slog.Logger) *Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), newBuildInfo())
	s := &Server{Registry: reg, log: log, mux: http.NewServeMux(), checks: map[string]Checker{},
		Limits: connlimit.Limits{MaxConns: DefaultMaxConns, MaxConnsPerAddr: DefaultMaxConnsPerAddr}}
	s.mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	s.mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("/readyz", s.serveReady)
	return s
}

// AddCheck registers a readiness check under name.
func (s *Server) AddCheck(name string, c Checker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks[name] = c
}

// EnableProfiling serves net/http/pprof under /debug/pprof/. It is off by
// default: profiles show internals, and a CPU profile costs while it runs.
func (s *Server) EnableProfiling() {
	s.mux.HandleFunc("/debug/pprof/", pprof.Index)
	s.mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	s.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// Handle adds an HTTP handler, such as a role's debug page.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

func (s *Server) serveReady(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	checks := make(map[string]Checker, len(s.checks))
	for k, v := range s.checks {
		checks[k] = v
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	var failed []string
	for name, c := range checks {
		if err := c(); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", name, err))
		}
	}
	if len(failed) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		for _, f := range failed {
			_, _ = fmt.Fprintln(w, f)
		}
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// Listen binds addr (host:port; port 0 picks one) within s.Limits (counted
// in traverse_listener_*{listener="admin"}). An empty addr disables the
// listener and Listen returns nil.
func (s *Server) Listen(addr string) error {
	if addr == "" {
		return nil
	}
	m, err := connlimit.NewMetrics(s.Registry, "admin")
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	s.ln = connlimit.New(ln, s.Limits, m)
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: idleTimeout,
		MaxHeaderBytes: maxHeaderBytes, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	return nil
}

// Addr returns the bound address, or nil before Listen.
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Handler returns the admin mux, for tests that do not listen.
func (s *Server) Handler() http.Handler { return s.mux }

// Run serves until ctx is done, then shuts down within 5 s.
func (s *Server) Run(ctx context.Context) error {
	if s.srv == nil {
		<-ctx.Done()
		return nil
	}
	s.log.Info("admin listening", "addr", s.ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
