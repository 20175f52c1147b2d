package signal

import "crypto/tls"

// tlsForHTTP is c for the HTTP listener: HTTP/1.1 only, since the
// WebSocket upgrade (RFC 6455) is an HTTP/1.1 request and net/http's
// HTTP/2 is not wired to a plain TLS listener anyway.
func tlsForHTTP(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.NextProtos = []string{"http/1.1"}
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	return c
}
