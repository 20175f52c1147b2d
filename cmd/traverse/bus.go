package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/traverse-rtc/traverse/internal/admin"
	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/stun"
	"github.com/traverse-rtc/traverse/internal/tlsutil"
)

// busConfig is the embedded NATS server of "traverse serve" and of
// "traverse bus".
type busConfig struct {
	Listen      string   `yaml:"listen"`
	CredsDir    string   `yaml:"creds-dir"`
	Nodes       []string `yaml:"node"`
	Relays      []string `yaml:"relay-node"`
	Distributes []string `yaml:"distribute-node"`
	TLSCert     string   `yaml:"tls-cert"`
	TLSKey      string   `yaml:"tls-key"`
	TLSClientCA string   `yaml:"tls-client-ca"`
	NoAuth      bool     `yaml:"insecure-no-auth"`
	NoAuthAny   bool     `yaml:"insecure-no-auth-any-address"`
	MaxConns    int      `yaml:"max-conns"`
	// Cluster (docs/cluster.md).
	ServerName    string   `yaml:"server-name"`
	ClusterListen string   `yaml:"cluster-listen"`
	ClusterName   string   `yaml:"cluster-name"`
	Routes        []string `yaml:"routes"`
	ClusterSecret string   `yaml:"cluster-secret-file"`
	JetStreamDir  string   `yaml:"jetstream-dir"`
}

func bindBusFlags(fs *flag.FlagSet, prefix string, c *busConfig, serve bool) {
	fs.StringVar(&c.Listen, prefix+"listen", c.Listen, "NATS server `host:port` the roles talk over (port 0 picks one; a non-loopback address without TLS logs a warning)")
	dirHelp := "`directory` of credentials files, one per role: signal.creds and sfu-NODE.creds (mode 0600), made when missing, loaded when present"
	if serve {
		dirHelp += "; serve's own roles need none: set it to let separate signal or sfu processes join serve's bus"
	}
	fs.StringVar(&c.CredsDir, prefix+"creds-dir", c.CredsDir, dirHelp)
	fs.Var(config.Strings{P: &c.Nodes}, prefix+"node", "SFU node `id` to make credentials for in --creds-dir (repeatable); a node may use only its own subjects")
	fs.Var(config.Strings{P: &c.Relays}, prefix+"relay-node", "relay node `id` to make credentials for in --creds-dir (relay-ID.creds; repeatable)")
	fs.Var(config.Strings{P: &c.Distributes}, prefix+"distribute-node", "distribute node `id` to make credentials for in --creds-dir (distribute-ID.creds; repeatable)")
	fs.StringVar(&c.TLSCert, prefix+"tls-cert", c.TLSCert, "TLS certificate PEM `file`: clients must connect over TLS (give them its CA with --nats-tls-ca)")
	fs.StringVar(&c.TLSKey, prefix+"tls-key", c.TLSKey, "TLS private key PEM `file`")
	if !serve {
		fs.StringVar(&c.TLSClientCA, prefix+"tls-client-ca", c.TLSClientCA, "PEM `file` of CAs whose client certificates are required (mutual TLS, with --tls-cert)")
	}
	fs.IntVar(&c.MaxConns, prefix+"max-conns", c.MaxConns, "connections the bus holds at once, authenticated or not (0: 1024); beyond, new ones are closed")
	fs.StringVar(&c.ServerName, prefix+"server-name", c.ServerName, "this server's `name` in a cluster: unique per node, stable across restarts (default traverse; with --"+prefix+"cluster-listen, HOSTNAME-PORT)")
	fs.StringVar(&c.ClusterListen, prefix+"cluster-listen", c.ClusterListen, "route `host:port` other bus nodes connect to (makes this bus one node of a NATS cluster; needs --"+prefix+"jetstream-dir)")
	fs.StringVar(&c.ClusterName, prefix+"cluster-name", c.ClusterName, "cluster `name`, the same on every node (default traverse)")
	fs.Var(config.Strings{P: &c.Routes}, prefix+"routes", "peers' route `urls` (nats://host:6222, comma-separated or repeated); the cluster secret is added to each")
	fs.StringVar(&c.ClusterSecret, prefix+"cluster-secret-file", c.ClusterSecret, "`file` of the secret routes authenticate with, the same on every node (default CREDS-DIR/cluster.secret, made when missing)")
	fs.StringVar(&c.JetStreamDir, prefix+"jetstream-dir", c.JetStreamDir, "`directory` of JetStream's file store: enables the key-value buckets of the controller (node registry, room directory, leadership); required with --"+prefix+"cluster-listen")
	fs.BoolVar(&c.NoAuth, prefix+"insecure-no-auth", c.NoAuth, "accept clients without credentials, every subject allowed (loopback only, unless --"+prefix+"insecure-no-auth-any-address)")
	fs.BoolVar(&c.NoAuthAny, prefix+"insecure-no-auth-any-address", c.NoAuthAny, "with --"+prefix+"insecure-no-auth, also on a non-loopback address: anyone who reaches the port reads every SDP and speaks for any node")
}

// startBusServer starts the embedded server as c says, with the identities
// of c.CredsDir (made for signal and every c.Nodes when missing).
func startBusServer(c *busConfig, log *slog.Logger, adm *admin.Server) (*bus.Embedded, error) {
	cfg := bus.EmbeddedConfig{Listen: c.Listen, NoAuth: c.NoAuth, NoAuthAnyAddress: c.NoAuthAny, MaxConns: c.MaxConns, Log: log,
		ServerName: c.ServerName, JetStreamDir: c.JetStreamDir}
	if err := c.cluster(&cfg); err != nil {
		return nil, err
	}
	if adm != nil {
		cfg.Registerer = adm.Registry
	}
	if c.TLSCert != "" || c.TLSKey != "" {
		if c.TLSCert == "" || c.TLSKey == "" {
			return nil, errors.New("bus: --tls-cert and --tls-key go together")
		}
		tc, err := tlsutil.ServerConfig(c.TLSCert, c.TLSKey, "traverse bus")
		if err != nil {
			return nil, fmt.Errorf("bus: %w", err)
		}
		if c.TLSClientCA != "" {
			pem, err := os.ReadFile(c.TLSClientCA)
			if err != nil {
				return nil, fmt.Errorf("bus: --tls-client-ca: %w", err)
			}
			tc.ClientCAs = x509.NewCertPool()
			if !tc.ClientCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("bus: --tls-client-ca %s: no certificate", c.TLSClientCA)
			}
			tc.ClientAuth = tls.RequireAndVerifyClientCert
		}
		cfg.TLS = tc
	} else if c.TLSClientCA != "" {
		return nil, errors.New("bus: --tls-client-ca needs --tls-cert and --tls-key")
	}
	if c.CredsDir != "" && !c.NoAuth {
		ids, err := loadCredsDir(c.CredsDir, c.Nodes, c.Relays, c.Distributes, log)
		if err != nil {
			return nil, err
		}
		cfg.Identities = ids
	} else if len(c.Nodes) > 0 && !c.NoAuth {
		return nil, errors.New("bus: --node needs --creds-dir, where its credentials go")
	}
	e, err := bus.StartEmbedded(cfg)
	if err != nil {
		return nil, err
	}
	log.Info("bus listening", "url", e.URL(), "tls", cfg.TLS != nil, "auth", !c.NoAuth, "identities", len(cfg.Identities),
		"server", cfg.ServerName, "cluster", e.ClusterAddr(), "routes", len(cfg.Cluster.Routes), "jetstream", cfg.JetStreamDir != "")
	return e, nil
}

// cluster fills cfg's cluster settings: routes, name and the secret (from
// --cluster-secret-file, else CREDS-DIR/cluster.secret).
func (c *busConfig) cluster(cfg *bus.EmbeddedConfig) error {
	if c.ClusterListen == "" {
		if len(c.Routes) > 0 || c.ClusterSecret != "" {
			return errors.New("bus: --routes and --cluster-secret-file need --cluster-listen")
		}
		return nil
	}
	path := c.ClusterSecret
	if path == "" {
		if c.CredsDir == "" {
			return errors.New("bus: a cluster node needs --cluster-secret-file (or --creds-dir, where cluster.secret is kept)")
		}
		if err := os.MkdirAll(c.CredsDir, 0o700); err != nil {
			return fmt.Errorf("bus: --creds-dir: %w", err)
		}
		path = filepath.Join(c.CredsDir, "cluster.secret")
	}
	secret, err := bus.ClusterSecretFile(path)
	if err != nil {
		return err
	}
	var routes []string
	for _, r := range c.Routes {
		routes = append(routes, bus.SplitURLs(r)...)
	}
	cfg.Cluster = bus.ClusterConfig{Listen: c.ClusterListen, Name: c.ClusterName, Routes: routes, Secret: secret}
	if cfg.ServerName == "" {
		host, _ := os.Hostname()
		_, port, _ := net.SplitHostPort(c.ClusterListen)
		cfg.ServerName = strings.Trim(host+"-"+port, "-")
	}
	return nil
}

// credsFile is the file of role (and node) in dir.
func credsFile(dir string, role bus.Role, node string) string {
	if role == bus.RoleNode {
		return filepath.Join(dir, "sfu-"+node+".creds")
	}
	if role == bus.RoleRelay || role == bus.RoleDistribute {
		return filepath.Join(dir, string(role)+"-"+node+".creds")
	}
	return filepath.Join(dir, string(role)+".creds")
}

// loadCredsDir loads every *.creds file of dir, first writing the missing
// ones of signal, the controller and each of the SFU, relay and distribute
// nodes.
func loadCredsDir(dir string, nodes, relays, distributes []string, log *slog.Logger) ([]*bus.Identity, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("bus: --creds-dir: %w", err)
	}
	type want struct {
		role bus.Role
		node string
	}
	wants := []want{{bus.RoleSignal, ""}, {bus.RoleController, ""}}
	for _, n := range nodes {
		if !bus.ValidName(n) {
			return nil, fmt.Errorf("bus: --node %q: %w", n, bus.ErrBadSubjectToken)
		}
		wants = append(wants, want{bus.RoleNode, n})
	}
	for _, n := range relays {
		if !bus.ValidName(n) {
			return nil, fmt.Errorf("bus: --relay-node %q: %w", n, bus.ErrBadSubjectToken)
		}
		wants = append(wants, want{bus.RoleRelay, n})
	}
	for _, n := range distributes {
		if !bus.ValidName(n) {
			return nil, fmt.Errorf("bus: --distribute-node %q: %w", n, bus.ErrBadSubjectToken)
		}
		wants = append(wants, want{bus.RoleDistribute, n})
	}
	for _, w := range wants {
		path := credsFile(dir, w.role, w.node)
		if _, err := os.Stat(path); err == nil {
			continue
		}
		id, err := bus.NewIdentity(w.role, w.node)
		if err != nil {
			return nil, err
		}
		if err := id.WriteFile(path); err != nil {
			return nil, err
		}
		log.Info("bus: wrote credentials", "role", id.String(), "file", path)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.creds"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var ids []*bus.Identity
	for _, f := range files {
		id, err := bus.LoadIdentity(f)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// natsClientConfig is how a separate signal or sfu process reaches the bus.
type natsClientConfig struct {
	NATS        string `yaml:"nats"`
	NATSCreds   string `yaml:"nats-creds"`
	NATSTLSCA   string `yaml:"nats-tls-ca"`
	NATSTLSCert string `yaml:"nats-tls-cert"`
	NATSTLSKey  string `yaml:"nats-tls-key"`
}

func bindNATSClientFlags(fs *flag.FlagSet, prefix string, c *natsClientConfig, urlHelp string) {
	fs.StringVar(&c.NATS, prefix+"nats", c.NATS, urlHelp)
	fs.StringVar(&c.NATSCreds, prefix+"nats-creds", c.NATSCreds, "bus credentials `file` of this role (from traverse bus --creds-dir; also an nkey seed or a NATS .creds file)")
	fs.StringVar(&c.NATSTLSCA, prefix+"nats-tls-ca", c.NATSTLSCA, "PEM `file` of the CAs of the bus servers' certificates (requires TLS)")
	fs.StringVar(&c.NATSTLSCert, prefix+"nats-tls-cert", c.NATSTLSCert, "client certificate PEM `file` for a bus that requires one")
	fs.StringVar(&c.NATSTLSKey, prefix+"nats-tls-key", c.NATSTLSKey, "client key PEM `file` of --nats-tls-cert")
}

// busClient returns the bus.Config of c.
func (c *natsClientConfig) busClient(name string) bus.Config {
	return bus.Config{URLs: bus.SplitURLs(c.NATS), Name: name, CredsFile: c.NATSCreds,
		TLSCA: c.NATSTLSCA, TLSCert: c.NATSTLSCert, TLSKey: c.NATSTLSKey}
}

// inProcessBus returns the bus.Config of a role of serve on serve's own
// embedded bus, with a fresh credential for role (and node).
func (env *serveEnv) inProcessBus(name string, role bus.Role, node string) (bus.Config, error) {
	if env.bus == nil {
		return bus.Config{}, errors.New("no bus: the bus role did not start")
	}
	id, err := env.bus.NewIdentity(role, node)
	if err != nil {
		return bus.Config{}, err
	}
	return bus.Config{URLs: []string{env.bus.URL()}, Name: name, Identity: id, TLS: env.busTLS}, nil
}

func init() {
	register(command{name: "bus", summary: "the NATS bus of signal servers and SFU nodes, with credentials per role", run: runBus})
	registerServeRole(serveRole{name: "bus", order: 0,
		bind: func(fs *flag.FlagSet, prefix string) any {
			c := &busConfig{Listen: "127.0.0.1:4222"}
			bindBusFlags(fs, prefix, c, true)
			return c
		},
		start: startServeBus})
}

func startServeBus(_ context.Context, env *serveEnv) (runner, error) {
	c := env.cfg["bus"].(*busConfig)
	c.MaxConns = env.budgeted("bus", c.MaxConns, bus.DefaultMaxConns)
	e, err := startBusServer(c, env.log.With("role", "bus"), env.admin)
	if err != nil {
		return nil, err
	}
	env.bus = e
	env.own = append(env.own, e.Addr())
	if c.TLSCert != "" {
		// serve's roles trust the bus's own certificate.
		cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
		if err == nil && len(cert.Certificate) > 0 {
			leaf, perr := x509.ParseCertificate(cert.Certificate[0])
			if perr == nil {
				pool := x509.NewCertPool()
				pool.AddCert(leaf)
				host, _, _ := net.SplitHostPort(c.Listen)
				env.busTLS = &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS12}
			}
		}
	}
	return closeWhenDone(e), nil
}

func runBus(ctx context.Context, args []string) error {
	type file struct {
		common    `yaml:",inline"`
		busConfig `yaml:",inline"`
	}
	cfg := file{common: common{Admin: "127.0.0.1:9422"}, busConfig: busConfig{Listen: "127.0.0.1:4222"}}
	fs := newFlagSet("bus", "bus --listen ADDR --creds-dir DIR [--node ID ...] [--tls-cert FILE --tls-key FILE] [flags]")
	cfg.common.flags(fs)
	bindBusFlags(fs, "", &cfg.busConfig, false)
	log, err := loadFlags(fs, args, &cfg, &cfg.common)
	if err != nil {
		return err
	}
	if cfg.CredsDir == "" && !cfg.NoAuth {
		return errors.New("--creds-dir is required: the roles' credentials are kept there (or --insecure-no-auth)")
	}
	return runAlone(ctx, log, &cfg.common, func(adm *admin.Server) (runner, error) {
		e, err := startBusServer(&cfg.busConfig, log, adm)
		if err != nil {
			return nil, err
		}
		return closeWhenDone(e), nil
	})
}

// ownEndpoints returns the listeners serve's roles are configured with, so
// that serve's TURN relays to none of them (even with loopback peers
// allowed). Ports 0 are left out (they are known only once bound; the bus
// adds its own address when it starts).
func ownEndpoints(cfg *serveConfig) []netip.AddrPort {
	var out []netip.AddrPort
	add := func(s ...string) {
		for _, a := range s {
			ap, err := netip.ParseAddrPort(a)
			if err != nil || ap.Port() == 0 {
				continue
			}
			out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		}
	}
	add(cfg.Admin)
	for _, v := range cfg.roles {
		switch c := v.(type) {
		case *busConfig:
			add(c.Listen)
		case *signalConfig:
			add(c.HTTP.String())
		case *sfuConfig:
			add(c.UDP.String(), c.TCP.String())
		case *sipgwConfig:
			add(c.SIP, c.SIPTLS, c.RTP, c.RTCP, c.Control)
		case *stun.Config:
			add(c.Listen.String(), c.TLSListen.String())
			if ap := c.Listen; ap.IsValid() && c.OtherAddress.IsValid() {
				other := c.OtherPort
				if other == 0 {
					other = int(ap.Port()) + 1
				}
				host, oh := ap.Addr().String(), c.OtherAddress.String()
				add(hostPort(host, other), hostPort(oh, int(ap.Port())), hostPort(oh, other))
			}
		}
	}
	return out
}

// hostPort joins host and port unless port is 0.
func hostPort(host string, port int) string {
	if port == 0 || host == "" {
		return ""
	}
	return net.JoinHostPort(strings.Trim(host, "[]"), fmt.Sprint(port))
}
