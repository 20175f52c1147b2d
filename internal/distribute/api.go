package distribute

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/bus"
	"github.com/traverse-rtc/traverse/internal/persource"
)

// Defaults of APIConfig.
const (
	// DefaultAPIRate is the table changes per second one source may ask
	// (HTTP: per IPv4 address or IPv6 /64; bus: all requests together).
	// Each change rebuilds the table's snapshot.
	DefaultAPIRate = 20
	// maxBody bounds a request body: a request of MaxDistributeReceivers
	// receivers is about 50 KB.
	maxBody = 64 << 10
)

// APIConfig configures the control API (HTTP and bus).
type APIConfig struct {
	// Token authorises HTTP requests (Authorization: Bearer TOKEN);
	// required for the HTTP API.
	Token string
	// Rate is requests per second per source (0: DefaultAPIRate;
	// negative: no limit); Burst what a source may send at once (0:
	// twice Rate).
	Rate  float64
	Burst int
}

// API serves a Table's control requests over HTTP and the bus, both
// decoded and validated by bus.Decode[bus.DistributeRequest], so both
// take the same requests and give the same answers.
type API struct {
	t        *Table
	token    [32]byte
	rate     *persource.Rate
	requests *prometheus.CounterVec
	path     string
}

// NewAPI returns the control API of the server's table.
func NewAPI(s *Server, cfg APIConfig, reg prometheus.Registerer) (*API, error) {
	if cfg.Rate == 0 {
		cfg.Rate = DefaultAPIRate
	}
	if cfg.Burst <= 0 {
		cfg.Burst = int(2 * max(cfg.Rate, 1))
	}
	a := &API{t: s.Table(), token: sha256.Sum256([]byte(cfg.Token)), rate: persource.NewRate(cfg.Rate, cfg.Burst), path: s.Path()}
	if cfg.Token == "" {
		a.token = [32]byte{} // no token: every HTTP request is refused
	}
	a.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "traverse_distribute_api_requests_total",
		Help: "Control requests, by channel (http, bus) and result: ok, bad_request, unauthorized (refused by the address policy, or a bad token), not_found, conflict, unavailable (a limit), rate_limited.",
	}, []string{"via", "result"})
	if err := reg.Register(a.requests); err != nil {
		return nil, err
	}
	return a, nil
}

// status classes an error of the table.
func status(err error) bus.Status {
	switch {
	case errors.Is(err, ErrNotFound):
		return bus.StatusNotFound
	case errors.Is(err, ErrExists):
		return bus.StatusConflict
	case errors.Is(err, ErrLimit):
		return bus.StatusUnavailable
	case errors.Is(err, ErrRefused):
		return bus.StatusUnauthorized
	case errors.Is(err, ErrBadStream), errors.Is(err, ErrBadReceiver):
		return bus.StatusBadRequest
	}
	return bus.StatusInternal
}

// Apply carries out one valid request.
func (a *API) Apply(req bus.DistributeRequest) (bus.DistributeReply, error) {
	k := StreamKey{Dst: req.Dst}
	if req.SSRC != nil {
		k.SSRC, k.HasSSRC = *req.SSRC, true
	}
	var err error
	switch req.Op {
	case bus.DistributeList:
		b, jerr := json.Marshal(a.t.Streams())
		if jerr != nil {
			return bus.DistributeReply{}, jerr
		}
		return bus.DistributeReply{Streams: b}, nil
	case bus.DistributeAddStream:
		err = a.t.AddStream(Stream{Key: k, Source: req.Source, Receivers: req.Receivers})
	case bus.DistributeRemoveStream:
		err = a.t.RemoveStream(k)
	case bus.DistributeAddReceivers:
		for _, r := range req.Receivers {
			if err = a.t.AddReceiver(k, r); err != nil {
				break
			}
		}
	case bus.DistributeRemoveReceivers:
		for _, r := range req.Receivers {
			if err = a.t.RemoveReceiver(k, r); err != nil {
				break
			}
		}
	default:
		err = fmt.Errorf("%w: op %q", ErrBadStream, req.Op)
	}
	if err != nil {
		return bus.DistributeReply{}, &bus.Error{Status: status(err), Message: err.Error()}
	}
	return bus.DistributeReply{}, nil
}

// busSource is the rate-limit key of every bus request: the bus is one
// authenticated source.
var busSource = netip.IPv6Unspecified()

// HandleBus serves the table's requests for node on the bus until the
// subscription ends.
func (a *API) HandleBus(c *bus.Client, node string) (*bus.Subscription, error) {
	return c.HandleDistribute(node, func(req bus.DistributeRequest) (bus.DistributeReply, error) {
		if !a.rate.Allow(busSource) {
			a.requests.WithLabelValues("bus", "rate_limited").Inc()
			return bus.DistributeReply{}, bus.Errorf(bus.StatusUnavailable, "rate limited")
		}
		rep, err := a.Apply(req)
		a.count("bus", err)
		return rep, err
	}, func(error) { a.requests.WithLabelValues("bus", string(bus.StatusBadRequest)).Inc() })
}

func (a *API) count(via string, err error) {
	if err == nil {
		a.requests.WithLabelValues(via, "ok").Inc()
		return
	}
	a.requests.WithLabelValues(via, string(bus.AsError(err).Status)).Inc()
}

// ServeHTTP serves the HTTP API (docs/distribute.md):
//
//	GET  /v1/streams     the table with its counters
//	POST /v1/distribute  one bus.DistributeRequest as JSON
//	GET  /v1/path        the data path in use
//
// every request with Authorization: Bearer TOKEN.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	src := remoteAddr(r)
	if !a.rate.Allow(src) {
		a.requests.WithLabelValues("http", "rate_limited").Inc()
		http.Error(w, "rate limited", http.StatusTooManyRequests)
		return
	}
	if !a.authorised(r) {
		a.requests.WithLabelValues("http", "unauthorized").Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="traverse distribute"`)
		http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
		return
	}
	var req bus.DistributeRequest
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/streams":
		req.Op = bus.DistributeList
	case r.Method == http.MethodGet && r.URL.Path == "/v1/path":
		a.requests.WithLabelValues("http", "ok").Inc()
		writeJSON(w, http.StatusOK, map[string]string{"path": a.path})
		return
	case r.Method == http.MethodPost && r.URL.Path == "/v1/distribute":
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err == nil {
			req, err = bus.Decode[bus.DistributeRequest](b)
		}
		if err != nil {
			a.requests.WithLabelValues("http", "bad_request").Inc()
			writeJSON(w, http.StatusBadRequest, &bus.Error{Status: bus.StatusBadRequest, Message: err.Error()})
			return
		}
	default:
		a.requests.WithLabelValues("http", "not_found").Inc()
		http.NotFound(w, r)
		return
	}
	rep, err := a.Apply(req)
	a.count("http", err)
	if err != nil {
		e := bus.AsError(err)
		writeJSON(w, httpStatus(e.Status), e)
		return
	}
	if req.Op == bus.DistributeList {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(rep.Streams)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) authorised(r *http.Request) bool {
	if a.token == ([32]byte{}) {
		return false
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	h := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(h[:], a.token[:]) == 1
}

func httpStatus(s bus.Status) int {
	switch s {
	case bus.StatusBadRequest:
		return http.StatusBadRequest
	case bus.StatusUnauthorized:
		return http.StatusForbidden
	case bus.StatusNotFound:
		return http.StatusNotFound
	case bus.StatusConflict:
		return http.StatusConflict
	case bus.StatusUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func remoteAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	a, _ := netip.ParseAddr(host)
	return a
}
