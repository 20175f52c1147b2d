package bus

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// ClusterConfig makes an embedded server one node of a NATS cluster:
// routes to its peers and JetStream, whose key-value buckets hold the
// state that must outlive a process (docs/cluster.md).
type ClusterConfig struct {
	// Listen is the route port, "host:port" (port 0 picks one). Empty: no
	// cluster.
	Listen string
	// Name is the cluster's name, the same on every node. Default
	// "traverse".
	Name string
	// Routes are the other nodes' route URLs ("nats://host:6222"). The
	// cluster secret is added to each; a route URL may not carry its own.
	Routes []string
	// Secret authenticates routes: a node accepts a route only from a
	// peer that presents it, and presents it to its peers. Required with
	// Listen: an unauthenticated route port lets anyone who reaches it
	// join the cluster and read every message. At least 16 characters
	// (ClusterSecretFile writes one of 32 random bytes).
	Secret string
}

// ClusterUser is the user name routes authenticate with (with
// ClusterConfig.Secret as the password).
const ClusterUser = "traverse-route"

// minClusterSecret is the shortest cluster secret accepted.
const minClusterSecret = 16

// applyCluster sets the cluster options of opts.
func (c *ClusterConfig) apply(opts *server.Options) error {
	if c.Listen == "" {
		if len(c.Routes) > 0 {
			return fmt.Errorf("%w: routes without a cluster listen address", ErrCluster)
		}
		return nil
	}
	if len(c.Secret) < minClusterSecret {
		return fmt.Errorf("%w: a cluster secret of at least %d characters is required (routes must authenticate)", ErrCluster, minClusterSecret)
	}
	host, port, err := splitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("%w: cluster listen %q: %w", ErrCluster, c.Listen, err)
	}
	name := c.Name
	if name == "" {
		name = "traverse"
	}
	if !ValidName(name) {
		return fmt.Errorf("%w: cluster name %q: %w", ErrCluster, name, ErrBadSubjectToken)
	}
	opts.Cluster = server.ClusterOpts{
		Name: name, Host: host, Port: port,
		Username: ClusterUser, Password: c.Secret,
		AuthTimeout: 2, ConnectRetries: -1,
	}
	for _, r := range c.Routes {
		u, err := url.Parse(strings.TrimSpace(r))
		if err != nil || u.Host == "" || (u.Scheme != "nats" && u.Scheme != "nats-route") {
			return fmt.Errorf("%w: route %q: want nats://host:port", ErrCluster, r)
		}
		if u.User != nil {
			return fmt.Errorf("%w: route %q carries credentials: the cluster secret is added to every route", ErrCluster, r)
		}
		u.User = url.UserPassword(ClusterUser, c.Secret)
		opts.Routes = append(opts.Routes, u)
	}
	return nil
}

// splitHostPort splits "host:port", port 0 becoming nats-server's random
// port.
func splitHostPort(hp string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return "", 0, err
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// checkFree reports a clear error when host:port is taken, before
// nats-server, which only logs it, waits for a listener that never comes.
func checkFree(what, hp string) error {
	_, port, err := splitHostPort(hp)
	if err != nil || port <= 0 {
		return nil
	}
	ln, err := net.Listen("tcp", hp)
	if err != nil {
		return fmt.Errorf("bus: %s %s: %w", what, hp, err)
	}
	return ln.Close()
}

// ClusterSecretFile returns the cluster secret kept in path, writing a new
// random one (mode 0600) when the file is missing. Every node of a cluster
// needs the same file.
func ClusterSecretFile(path string) (string, error) {
	if st, err := os.Stat(path); err == nil {
		if st.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("%w: %s (mode %v): chmod 600 it", ErrCredentialsMode, path, st.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("bus: cluster secret: %w", err)
		}
		s := strings.TrimSpace(string(b))
		if len(s) < minClusterSecret {
			return "", fmt.Errorf("%w: %s: secret shorter than %d characters", ErrCluster, path, minClusterSecret)
		}
		return s, nil
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("bus: cluster secret: %w", err)
	}
	s := base64.RawURLEncoding.EncodeToString(raw[:])
	f, err := os.CreateTemp(dirOf(path), ".secret-*")
	if err != nil {
		return "", fmt.Errorf("bus: cluster secret: %w", err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return "", fmt.Errorf("bus: cluster secret: %w", err)
	}
	if _, err := f.WriteString(s + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("bus: cluster secret: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("bus: cluster secret: %w", err)
	}
	if err := os.Link(f.Name(), path); err != nil {
		// Another node sharing the directory wrote it first: use theirs.
		if os.IsExist(err) {
			return ClusterSecretFile(path)
		}
		return "", fmt.Errorf("bus: cluster secret: %w", err)
	}
	return s, nil
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, os.PathSeparator); i >= 0 {
		return path[:i+1]
	}
	return "."
}
