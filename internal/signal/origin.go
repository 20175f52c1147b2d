package signal

import (
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// originPolicy decides which web pages may use the server (Config.AllowedOrigins).
type originPolicy struct {
	any     bool
	origins map[string]bool // normalized scheme://host[:port]
	hosts   map[string]bool // their host[:port], for the Host check
}

func newOriginPolicy(allowed []string) originPolicy {
	p := originPolicy{origins: map[string]bool{}, hosts: map[string]bool{}}
	for _, o := range allowed {
		if o == "*" {
			p.any = true
			continue
		}
		n, err := normalizeOrigin(o) // validated by Config.validate
		if err != nil {
			continue
		}
		p.origins[n] = true
		p.hosts[n[strings.Index(n, "://")+3:]] = true
	}
	return p
}

var errOrigin = errors.New("not scheme://host[:port] with scheme http or https")

// normalizeOrigin returns o as scheme://host[:port] in lower case without
// the scheme's default port, as RFC 6454 section 6.1 serializes an origin.
func normalizeOrigin(o string) (string, error) {
	u, err := url.Parse(strings.TrimSuffix(o, "/"))
	if err != nil {
		return "", err
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" || u.Host == "" || u.Path != "" || u.User != nil ||
		u.RawQuery != "" || u.Fragment != "" {
		return "", errOrigin
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if host == "" || strings.IndexFunc(host, notHostChar) >= 0 {
		return "", errOrigin // zones, escapes: nothing a browser sends
	}
	if _, err := strconv.ParseUint(port, 10, 16); port != "" && err != nil {
		return "", errOrigin
	}
	if scheme == "http" && port == "80" || scheme == "https" && port == "443" {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host += ":" + port
	}
	return scheme + "://" + host, nil
}

func notHostChar(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == ':' || r == '_')
}

// allowOrigin reports whether r's Origin, if any, may use the server.
func (p originPolicy) allowOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" || p.any {
		return true // not a browser: no page to protect against
	}
	n, err := normalizeOrigin(o)
	if err != nil {
		return false
	}
	if len(p.origins) > 0 {
		return p.origins[n]
	}
	u, _ := url.Parse(n)
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return ownHost(r, u.Hostname(), port)
}

// allowHost reports whether r's Host names the server as an allowed page
// would: a rebinding page's requests carry its own name.
func (p originPolicy) allowHost(r *http.Request) bool {
	if p.any {
		return true
	}
	if len(p.hosts) > 0 {
		h := strings.ToLower(r.Host)
		if p.hosts[h] {
			return true
		}
		// Host may carry the default port the origin left out.
		host, port, err := net.SplitHostPort(h)
		if err == nil && (port == "80" || port == "443") {
			if strings.Contains(host, ":") {
				host = "[" + host + "]"
			}
			return p.hosts[host]
		}
		return false
	}
	host, port, err := net.SplitHostPort(r.Host)
	if err != nil {
		host, port = r.Host, "80"
	}
	return ownHost(r, host, port)
}

// ownHost reports whether host:port names the local end of r's connection
// on loopback (localhost, 127.0.0.1, ::1) or by its IP literal: names no
// DNS answer can point elsewhere.
func ownHost(r *http.Request, host, port string) bool {
	la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	local, err := netip.ParseAddrPort(la.String())
	if err != nil {
		return false
	}
	if port != "" && port != strconv.Itoa(int(local.Port())) {
		return false
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	return a.IsLoopback() || a == local.Addr().Unmap()
}
