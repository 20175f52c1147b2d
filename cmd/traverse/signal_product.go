package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/config"
	"github.com/traverse-rtc/traverse/internal/signal"
	"github.com/traverse-rtc/traverse/internal/tlsutil"
	"github.com/traverse-rtc/traverse/internal/turn"
)

// signalProductConfig is what signal needs to face browsers and operators
// on its own: TLS, TURN credentials, the room API and webhooks
// (docs/api.md, docs/signal.md).
type signalProductConfig struct {
	TLSCert        string        `yaml:"tls-cert"`
	TLSKey         string        `yaml:"tls-key"`
	TLSSelfSigned  bool          `yaml:"tls-self-signed"`
	TURNSecret     string        `yaml:"turn-secret"`
	TURNTTL        time.Duration `yaml:"turn-ttl"`
	AdminToken     string        `yaml:"admin-token"`
	WebhookURLs    []string      `yaml:"webhook-url"`
	WebhookKey     string        `yaml:"webhook-key"`
	WebhookRetries int           `yaml:"webhook-retries"`
	WebhookQueue   int           `yaml:"webhook-queue"`
	// prefix is the flags' prefix ("signal-" in serve), for errors.
	prefix string
}

// defaultTURNTTL is the lifetime of the TURN credentials handed to a
// joining participant: a call longer than this keeps its allocation (TURN
// refreshes use the credential of the allocation, checked at its creation)
// but cannot make a new one after an ICE restart.
const defaultTURNTTL = 12 * time.Hour

func bindSignalProductFlags(fs *flag.FlagSet, prefix string, c *signalProductConfig) {
	c.prefix = prefix
	fs.StringVar(&c.TLSCert, prefix+"tls-cert", c.TLSCert, "serve HTTPS and WSS with this certificate PEM `file` (with --"+prefix+"tls-key)")
	fs.StringVar(&c.TLSKey, prefix+"tls-key", c.TLSKey, "private key PEM `file` of --"+prefix+"tls-cert")
	fs.BoolVar(&c.TLSSelfSigned, prefix+"tls-self-signed", c.TLSSelfSigned, "serve HTTPS and WSS with a self-signed certificate made at start (local use: browsers warn)")
	fs.StringVar(&c.TURNSecret, prefix+"turn-secret", c.TURNSecret, "shared `secret` of the TURN servers (their --auth-secret): each participant gets time-limited credentials for the turn: and turns: --"+prefix+"ice-url URLs")
	fs.DurationVar(&c.TURNTTL, prefix+"turn-ttl", c.TURNTTL, "lifetime of the TURN credentials handed to a participant (0: 12h; keep it under the TURN servers' --rest-max-lifetime, 24h)")
	fs.StringVar(&c.AdminToken, prefix+"admin-token", c.AdminToken, "bearer `token` of the room API under /v1/ (at least 16 bytes; empty: no API; docs/api.md)")
	fs.Var(config.Strings{P: &c.WebhookURLs}, prefix+"webhook-url", "`URL` that receives room and participant events as signed POSTs (repeatable; docs/api.md)")
	fs.StringVar(&c.WebhookKey, prefix+"webhook-key", c.WebhookKey, "HMAC-SHA256 `key` signing the webhooks (at least 16 bytes; required with --"+prefix+"webhook-url)")
	fs.IntVar(&c.WebhookRetries, prefix+"webhook-retries", c.WebhookRetries, "retries of a failed webhook delivery, after 1s, 2s, 4s... (0: 3; negative: none)")
	fs.IntVar(&c.WebhookQueue, prefix+"webhook-queue", c.WebhookQueue, "webhook events waiting for delivery at most; beyond, new ones are dropped and counted (0: 1000)")
}

func (c *signalProductConfig) flag(name string) string { return "--" + c.prefix + name }

// apply checks the values and fills cfg. iceURLs are the static
// --ice-url URLs; share, in serve, is its STUN and TURN roles'.
func (c *signalProductConfig) apply(cfg *signal.Config, iceURLs []string, share *iceShare, reg *prometheus.Registry) error {
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		return fmt.Errorf("%s must be at least 16 bytes", c.flag("admin-token"))
	}
	if len(c.WebhookURLs) > 0 && len(c.WebhookKey) < 16 {
		return fmt.Errorf("%s is required with %s, at least 16 bytes", c.flag("webhook-key"), c.flag("webhook-url"))
	}
	if c.TURNTTL < 0 {
		return fmt.Errorf("%s %v: must not be negative", c.flag("turn-ttl"), c.TURNTTL)
	}
	if c.WebhookQueue < 0 {
		return fmt.Errorf("%s %d: must not be negative", c.flag("webhook-queue"), c.WebhookQueue)
	}
	if c.TURNSecret != "" && len(c.TURNSecret) < 16 {
		return fmt.Errorf("%s: at least 16 bytes (a short secret can be guessed from one credential)", c.flag("turn-secret"))
	}
	ttl := c.TURNTTL
	if ttl == 0 {
		ttl = defaultTURNTTL
	}
	var stunURLs, turnURLs []string
	for _, u := range iceURLs {
		switch {
		case strings.HasPrefix(u, "turn:"), strings.HasPrefix(u, "turns:"):
			turnURLs = append(turnURLs, u)
		case strings.HasPrefix(u, "stun:"), strings.HasPrefix(u, "stuns:"):
			stunURLs = append(stunURLs, u)
		default:
			return fmt.Errorf("%s %q: want stun:, stuns:, turn: or turns: (RFC 7064, RFC 7065)", c.flag("ice-url"), u)
		}
	}
	if len(turnURLs) > 0 && c.TURNSecret == "" {
		return fmt.Errorf("%s %s needs %s: browsers refuse a TURN server without a username and credential",
			c.flag("ice-url"), turnURLs[0], c.flag("turn-secret"))
	}
	if share != nil {
		stunURLs = append(stunURLs, share.STUN...)
		if len(share.URLs) == 0 {
			share = nil // no TURN role, or none a browser can reach
		}
	}
	if len(stunURLs) > 0 || len(turnURLs) > 0 || share != nil {
		secret := c.TURNSecret
		cfg.ICEServers = func(identity string) []signal.ICEServer {
			var out []signal.ICEServer
			if len(stunURLs) > 0 {
				out = append(out, signal.ICEServer{URLs: stunURLs})
			}
			if len(turnURLs) > 0 {
				user, pass := turn.RESTCredentials(secret, identity, ttl, time.Now())
				out = append(out, signal.ICEServer{URLs: turnURLs, Username: user, Credential: pass})
			}
			if share != nil && len(share.URLs) > 0 {
				user, pass := share.Credentials(identity, ttl)
				out = append(out, signal.ICEServer{URLs: share.URLs, Username: user, Credential: pass})
			}
			return out
		}
	}
	switch {
	case c.TLSSelfSigned && (c.TLSCert != "" || c.TLSKey != ""):
		return fmt.Errorf("%s or %s and %s, not both", c.flag("tls-self-signed"), c.flag("tls-cert"), c.flag("tls-key"))
	case c.TLSCert != "" || c.TLSKey != "" || c.TLSSelfSigned:
		hosts := []string{"localhost", "127.0.0.1", "::1"}
		if cfg.Listen.IsValid() && !cfg.Listen.Addr().IsUnspecified() {
			hosts = append(hosts, cfg.Listen.Addr().String())
		}
		t, err := tlsutil.ServerConfig(c.TLSCert, c.TLSKey, "traverse signal", hosts...)
		if err != nil {
			if errors.Is(err, tlsutil.ErrHalfPair) {
				return fmt.Errorf("%s and %s go together", c.flag("tls-cert"), c.flag("tls-key"))
			}
			return fmt.Errorf("%s, %s: %w", c.flag("tls-cert"), c.flag("tls-key"), err)
		}
		cfg.TLS = t
	}
	cfg.API = signal.APIConfig{AdminToken: c.AdminToken, WebhookURLs: c.WebhookURLs, WebhookKey: []byte(c.WebhookKey),
		WebhookRetries: c.WebhookRetries, WebhookQueue: c.WebhookQueue}
	if reg != nil {
		cfg.API.Stats = func() map[string]float64 { return statsFrom(reg) }
	}
	return nil
}

// consoleStats are the metrics of this process that GET /v1/stats adds for
// the console's charts, each summed over its labels and named without the
// traverse_ prefix.
var consoleStats = []string{
	"traverse_sfu_sessions", "traverse_sfu_rooms", "traverse_sfu_rtp_received_total", "traverse_sfu_rtp_forwarded_total",
	"traverse_turn_allocations", "traverse_turn_relayed_packets_total", "traverse_turn_relayed_bytes_total",
	"traverse_sipgw_calls", "traverse_mediaproxy_packets_total", "traverse_mediaproxy_bytes_total",
}

func statsFrom(g prometheus.Gatherer) map[string]float64 {
	out := map[string]float64{}
	mfs, err := g.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		name := mf.GetName()
		found := false
		for _, s := range consoleStats {
			found = found || s == name
		}
		if !found {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
		out[strings.TrimPrefix(name, "traverse_")] = sum
	}
	return out
}

// serveAdminToken gives serve, the local demo, a room API out of the box:
// without --signal-admin-token it makes a random token for this process and
// logs it, so the console (/console.html) can log in.
func serveAdminToken(c *signalConfig, log *slog.Logger) {
	if c.AdminToken != "" {
		return
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	c.AdminToken = hex.EncodeToString(b)
	scheme := "http"
	if c.TLSCert != "" || c.TLSSelfSigned {
		scheme = "https"
	}
	log.Info("signal: room API admin token for this process (set --signal-admin-token to choose it)",
		"admin_token", c.AdminToken, "console", scheme+"://"+c.HTTP.String()+"/console.html")
}

// checkLimits refuses negative limits and timeouts, which have no meaning
// for signal (0 takes the default), naming the flag.
func (c *signalConfig) checkLimits() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"read-header-timeout", c.ReadHeaderTimeout}, {"idle-timeout", c.IdleTimeout}, {"join-timeout", c.JoinTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("%s %v: must not be negative (0 takes the default)", c.flag(d.name), d.v)
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"max-conns", c.MaxConns}, {"max-conns-per-addr", c.MaxConnsPerAddr}, {"node-capacity", c.NodeCapacity}} {
		if n.v < 0 {
			return fmt.Errorf("%s %d: must not be negative (0 takes the default)", c.flag(n.name), n.v)
		}
	}
	return nil
}
