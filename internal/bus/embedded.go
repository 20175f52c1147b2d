package bus

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Embedded is a nats-server running inside this process: the bus of
// "traverse serve" and of tests.
type Embedded struct {
	ns *server.Server
}

// StartEmbedded starts a NATS server listening on listen ("host:port"; port
// 0 picks a free port). It accepts clients without authentication, so bind
// it to loopback unless the network is trusted.
func StartEmbedded(listen string) (*Embedded, error) {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded listen %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("bus: embedded listen %q: %w", listen, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "traverse",
		Host:       host,
		Port:       port,
		NoLog:      true,
		NoSigs:     true,
		// No monitoring, no cluster: a single in-process server.
		HTTPPort:   0,
		MaxPayload: 1 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: embedded server: %w", err)
	}
	go ns.Start() // Start returns once listening; it owns its goroutines until Shutdown.
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("bus: embedded server on %s not ready", listen)
	}
	return &Embedded{ns: ns}, nil
}

// URL returns the server's client URL.
func (e *Embedded) URL() string { return e.ns.ClientURL() }

// Close shuts the server down and waits for it. It is idempotent.
func (e *Embedded) Close() error {
	e.ns.Shutdown()
	e.ns.WaitForShutdown()
	return nil
}
