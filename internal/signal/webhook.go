package signal

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/traverse-rtc/traverse/internal/config"
)

// Webhook events (docs/api.md).
const (
	WebhookRoomStarted       = "room_started"
	WebhookRoomEnded         = "room_ended"
	WebhookParticipantJoined = "participant_joined"
	WebhookParticipantLeft   = "participant_left"
)

// Webhook headers: the delivery's id, and its signature
// "t=UNIX,v1=hex(HMAC-SHA256(key, UNIX + "." + body))".
const (
	WebhookIDHeader        = "Traverse-Webhook-Id"
	WebhookSignatureHeader = "Traverse-Signature"
)

// ErrWebhookSignature: a webhook delivery's signature is missing, malformed,
// does not match the key, or its timestamp is outside the tolerance.
var ErrWebhookSignature = errors.New("signal: bad webhook signature")

// APIConfig configures the room API and the webhooks. Zero values take
// the documented defaults; without AdminToken the API is off (404).
type APIConfig struct {
	// AdminToken authorises the room API (Authorization: Bearer TOKEN); at
	// least 16 bytes. Empty: no API.
	AdminToken string
	// Stats, when set, adds counters to GET /v1/stats (in serve: TURN
	// allocations, SIP calls, SFU packets from the other roles' metrics).
	Stats func() map[string]float64
	// WebhookURLs receive every event as a signed HTTP POST.
	WebhookURLs []string
	// WebhookKey signs the deliveries (HMAC-SHA256); required with
	// WebhookURLs, at least 16 bytes.
	WebhookKey []byte
	// WebhookRetries is how many times a failed delivery is retried, after
	// 1 s, 2 s, 4 s, ... Default 3; negative: none.
	WebhookRetries int
	// WebhookQueue bounds the events waiting for delivery; when it is full
	// a new event is dropped and counted. Default 1000 (~1 KB each).
	WebhookQueue int
	// WebhookTimeout bounds one delivery. Default 5s.
	WebhookTimeout time.Duration
	// WebhookClient sends the deliveries. Default: an http.Client without
	// redirects.
	WebhookClient *http.Client
}

func (c *APIConfig) validate() error {
	if c.AdminToken != "" && len(c.AdminToken) < minAdminToken {
		return fmt.Errorf("%w: admin token must be at least %d bytes", ErrConfig, minAdminToken)
	}
	if len(c.WebhookURLs) > 0 && len(c.WebhookKey) < 16 {
		return fmt.Errorf("%w: webhooks need a key of at least 16 bytes", ErrConfig)
	}
	for _, u := range c.WebhookURLs {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("%w: webhook url %q: want http(s)://host/path", ErrConfig, u)
		}
	}
	config.Default(&c.WebhookRetries, 3)
	if c.WebhookRetries < 0 {
		c.WebhookRetries = 0
	}
	config.Default(&c.WebhookQueue, 1000)
	config.Default(&c.WebhookTimeout, 5*time.Second)
	if c.WebhookClient == nil {
		c.WebhookClient = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return nil
}

// WebhookEvent is the body of a webhook delivery.
type WebhookEvent struct {
	ID          string              `json:"id"`
	Event       string              `json:"event"`
	Time        time.Time           `json:"time"`
	Room        string              `json:"room"`
	Participant *WebhookParticipant `json:"participant,omitempty"`
	// Reason is why a participant left: left, disconnected, removed,
	// room_closed, node, shutdown.
	Reason string `json:"reason,omitempty"`
}

// WebhookParticipant names the participant of a participant event.
type WebhookParticipant struct {
	ID       string `json:"id"`
	Identity string `json:"identity"`
	Node     string `json:"node,omitempty"`
}

// apiMetrics count the room API and the webhooks.
type apiMetrics struct {
	refused  *prometheus.CounterVec // by reason: missing, wrong
	requests *prometheus.CounterVec // by result: ok, error
	actions  *prometheus.CounterVec // by action: remove, close, mute, token
	webhooks *prometheus.CounterVec // by result: ok, retry, failed, dropped
}

func newAPIMetrics(reg prometheus.Registerer) (*apiMetrics, error) {
	m := &apiMetrics{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_api_refused_total",
			Help: "Room API requests refused with 401, by reason (missing, wrong admin token)."}, []string{"reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_api_requests_total",
			Help: "Authorised room API requests, by result (ok, error)."}, []string{"result"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_api_actions_total",
			Help: "Room API actions done, by action (remove, close, mute, token)."}, []string{"action"}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_webhooks_total",
			Help: "Webhook deliveries by result (ok; retry: a failed attempt to be retried; failed: given up after the retries; dropped: queue full)."},
			[]string{"result"}),
	}
	for _, r := range []string{"missing", "wrong"} {
		m.refused.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "retry", "failed", "dropped"} {
		m.webhooks.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.refused, m.requests, m.actions, m.webhooks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// webhooks delivers events from a bounded queue, one at a time in order,
// from one goroutine owned by the Server.
type webhooks struct {
	cfg *APIConfig
	m   *apiMetrics
	log *slog.Logger
	now func() time.Time

	mu     sync.Mutex // guards closed and sends on q
	closed bool
	q      chan WebhookEvent
	done   chan struct{}
	// backoff is the first retry's delay, doubled for each next (1s;
	// tests shorten it before the first event).
	backoff time.Duration
	// stop ends retries and deliveries when the server closes and the
	// grace is over.
	ctx    context.Context
	cancel context.CancelFunc
}

func newWebhooks(cfg *APIConfig, m *apiMetrics, log *slog.Logger, now func() time.Time) *webhooks {
	ctx, cancel := context.WithCancel(context.Background())
	w := &webhooks{cfg: cfg, m: m, log: log, now: now, q: make(chan WebhookEvent, cfg.WebhookQueue),
		done: make(chan struct{}), ctx: ctx, cancel: cancel, backoff: time.Second}
	if len(cfg.WebhookURLs) == 0 {
		close(w.done)
		return w
	}
	go w.loop()
	return w
}

// emit queues an event; a full queue drops it (counted).
func (w *webhooks) emit(ev WebhookEvent) {
	if len(w.cfg.WebhookURLs) == 0 {
		return
	}
	ev.ID = randomID(8)
	ev.Time = w.now().UTC()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	select {
	case w.q <- ev:
	default:
		w.m.webhooks.WithLabelValues("dropped").Inc()
		w.log.Warn("signal: webhook queue full, event dropped", "event", ev.Event, "room", ev.Room)
	}
}

// close stops taking events and gives the queued ones grace to be
// delivered, then abandons the rest.
func (w *webhooks) close(grace time.Duration) {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.q)
	}
	w.mu.Unlock()
	t := time.AfterFunc(grace, w.cancel)
	<-w.done
	t.Stop()
	w.cancel()
}

func (w *webhooks) loop() {
	defer close(w.done)
	for ev := range w.q {
		body, err := json.Marshal(ev)
		if err != nil {
			continue
		}
		for _, u := range w.cfg.WebhookURLs {
			w.deliver(u, ev, body)
		}
	}
}

// deliver posts body to u, retrying with backoff.
func (w *webhooks) deliver(u string, ev WebhookEvent, body []byte) {
	backoff := w.backoff
	for attempt := 0; ; attempt++ {
		err := w.post(u, ev.ID, body)
		if err == nil {
			w.m.webhooks.WithLabelValues("ok").Inc()
			return
		}
		if attempt >= w.cfg.WebhookRetries || w.ctx.Err() != nil {
			w.m.webhooks.WithLabelValues("failed").Inc()
			w.log.Warn("signal: webhook failed", "url", u, "event", ev.Event, "id", ev.ID, "attempts", attempt+1, "err", err)
			return
		}
		w.m.webhooks.WithLabelValues("retry").Inc()
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-w.ctx.Done():
			t.Stop()
		}
		backoff *= 2
	}
}

func (w *webhooks) post(u, id string, body []byte) error {
	ctx, cancel := context.WithTimeout(w.ctx, w.cfg.WebhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "traverse-webhook")
	req.Header.Set(WebhookIDHeader, id)
	req.Header.Set(WebhookSignatureHeader, SignWebhook(w.cfg.WebhookKey, body, w.now()))
	resp, err := w.cfg.WebhookClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// SignWebhook returns the signature header value of body sent at now:
// "t=UNIX,v1=hex(HMAC-SHA256(key, UNIX "." body))".
func SignWebhook(key, body []byte, now time.Time) string {
	ts := strconv.FormatInt(now.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(webhookMAC(key, ts, body))
}

func webhookMAC(key []byte, ts string, body []byte) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return mac.Sum(nil)
}

// VerifyWebhook checks a delivery's signature header against key and body,
// and its timestamp against now within tolerance (a replayed delivery is
// refused once it is older). Receivers should also refuse an id they have
// seen. Every failure wraps ErrWebhookSignature.
func VerifyWebhook(key []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return fmt.Errorf("%w: want t=UNIX,v1=HEX", ErrWebhookSignature)
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("%w: v1 not hex", ErrWebhookSignature)
	}
	if !hmac.Equal(got, webhookMAC(key, ts, body)) {
		return fmt.Errorf("%w: mismatch", ErrWebhookSignature)
	}
	if d := now.Sub(time.Unix(t, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: timestamp %d outside %v of now", ErrWebhookSignature, t, tolerance)
	}
	return nil
}

// webhookGrace is how long Close gives queued webhook deliveries.
const webhookGrace = 3 * time.Second
