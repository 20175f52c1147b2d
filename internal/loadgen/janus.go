package loadgen

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/pion/webrtc/v4"
)

// Janus drives the Janus videoroom plugin over Janus's HTTP API, so the
// same synthetic clients can load Janus and traverse side by side. One
// Janus session carries every handle; one long-poll loop routes events.
type Janus struct {
	base string
	sid  uint64
	hc   *http.Client

	mu      sync.Mutex // guards waiters
	waiters map[uint64]chan janusMsg

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type janusJSEP struct {
	Type string `json:"type"`
	SDP  string `json:"sdp"`
}

type janusMsg struct {
	Janus       string          `json:"janus"`
	Transaction string          `json:"transaction,omitempty"`
	Sender      uint64          `json:"sender,omitempty"`
	Data        json.RawMessage `json:"data,omitempty"`
	PluginData  struct {
		Data json.RawMessage `json:"data"`
	} `json:"plugindata"`
	JSEP  *janusJSEP `json:"jsep,omitempty"`
	Error *struct {
		Code   int    `json:"code"`
		Reason string `json:"reason"`
	} `json:"error,omitempty"`
}

// NewJanus creates a session on the Janus at base ("http://127.0.0.1:8088/janus").
func NewJanus(ctx context.Context, base string) (*Janus, error) {
	j := &Janus{base: base, hc: &http.Client{Timeout: 40 * time.Second}, waiters: map[uint64]chan janusMsg{}}
	var data struct {
		ID uint64 `json:"id"`
	}
	if err := j.call(ctx, base, map[string]any{"janus": "create"}, &data); err != nil {
		return nil, err
	}
	j.sid = data.ID
	lctx, cancel := context.WithCancel(context.Background())
	j.cancel = cancel
	j.wg.Add(1)
	go func() { defer j.wg.Done(); j.poll(lctx) }()
	return j, nil
}

func txn() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// call POSTs a request and decodes the synchronous reply's data into out.
func (j *Janus) call(ctx context.Context, url string, req map[string]any, out any) error {
	req["transaction"] = txn()
	m, err := j.post(ctx, url, req)
	if err != nil {
		return err
	}
	if out != nil && m.Data != nil {
		return json.Unmarshal(m.Data, out)
	}
	return nil
}

func (j *Janus) post(ctx context.Context, url string, req map[string]any) (janusMsg, error) {
	b, _ := json.Marshal(req)
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return janusMsg{}, err
	}
	resp, err := j.hc.Do(hr)
	if err != nil {
		return janusMsg{}, err
	}
	defer resp.Body.Close()
	var m janusMsg
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return janusMsg{}, err
	}
	if m.Janus == "error" && m.Error != nil {
		return m, fmt.Errorf("janus: %d %s", m.Error.Code, m.Error.Reason)
	}
	return m, nil
}

func (j *Janus) poll(ctx context.Context) {
	url := fmt.Sprintf("%s/%d?maxev=50", j.base, j.sid)
	for ctx.Err() == nil {
		hr, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := j.hc.Do(hr)
		if err != nil {
			if ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		var msgs []janusMsg
		b := new(bytes.Buffer)
		_, _ = b.ReadFrom(resp.Body)
		resp.Body.Close()
		if err := json.Unmarshal(b.Bytes(), &msgs); err != nil {
			var one janusMsg
			if json.Unmarshal(b.Bytes(), &one) == nil {
				msgs = []janusMsg{one}
			}
		}
		for _, m := range msgs {
			if m.Janus != "event" || m.Sender == 0 {
				continue
			}
			j.mu.Lock()
			ch := j.waiters[m.Sender]
			j.mu.Unlock()
			if ch != nil {
				select {
				case ch <- m:
				default:
				}
			}
		}
	}
}

// handle is one plugin handle and its events.
type janusHandle struct {
	j      *Janus
	id     uint64
	events chan janusMsg
}

func (j *Janus) attach(ctx context.Context) (*janusHandle, error) {
	var data struct {
		ID uint64 `json:"id"`
	}
	if err := j.call(ctx, fmt.Sprintf("%s/%d", j.base, j.sid), map[string]any{"janus": "attach", "plugin": "janus.plugin.videoroom"}, &data); err != nil {
		return nil, err
	}
	h := &janusHandle{j: j, id: data.ID, events: make(chan janusMsg, 16)}
	j.mu.Lock()
	j.waiters[h.id] = h.events
	j.mu.Unlock()
	return h, nil
}

func (h *janusHandle) url() string { return fmt.Sprintf("%s/%d/%d", h.j.base, h.j.sid, h.id) }

// message sends a plugin request; a synchronous plugin answer is returned,
// an asynchronous one ("ack") is awaited on the event channel.
func (h *janusHandle) message(ctx context.Context, body map[string]any, jsep *janusJSEP) (janusMsg, error) {
	req := map[string]any{"janus": "message", "body": body, "transaction": txn()}
	if jsep != nil {
		req["jsep"] = jsep
	}
	m, err := h.j.post(ctx, h.url(), req)
	if err != nil {
		return m, err
	}
	if m.Janus == "success" {
		return m, pluginError(m)
	}
	select {
	case ev := <-h.events:
		return ev, pluginError(ev)
	case <-ctx.Done():
		return janusMsg{}, ctx.Err()
	}
}

func pluginError(m janusMsg) error {
	var d struct {
		Error     string `json:"error"`
		ErrorCode int    `json:"error_code"`
	}
	_ = json.Unmarshal(m.PluginData.Data, &d)
	if d.ErrorCode != 0 {
		return fmt.Errorf("janus videoroom: %d %s", d.ErrorCode, d.Error)
	}
	return nil
}

// trickleDone tells Janus the client's candidates are all in its SDP.
func (h *janusHandle) trickleDone(ctx context.Context) {
	_, _ = h.j.post(ctx, h.url(), map[string]any{"janus": "trickle", "candidate": map[string]any{"completed": true}, "transaction": txn()})
}

func (h *janusHandle) detach() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = h.j.post(ctx, h.url(), map[string]any{"janus": "detach", "transaction": txn()})
	h.j.mu.Lock()
	delete(h.j.waiters, h.id)
	h.j.mu.Unlock()
}

// CreateRoom creates a videoroom for up to publishers publishers.
func (j *Janus) CreateRoom(ctx context.Context, room, publishers int) error {
	h, err := j.attach(ctx)
	if err != nil {
		return err
	}
	defer h.detach()
	_, err = h.message(ctx, map[string]any{"request": "create", "room": room, "publishers": publishers,
		"bitrate": 0, "videocodec": "vp8", "audiocodec": "opus", "audiolevel_event": false, "notify_joining": false}, nil)
	if err != nil && strings.Contains(err.Error(), "427") { // exists already
		return nil
	}
	return err
}

// Close destroys the session. It is idempotent enough for a benchmark.
func (j *Janus) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, _ = j.post(ctx, fmt.Sprintf("%s/%d", j.base, j.sid), map[string]any{"janus": "destroy", "transaction": txn()})
	cancel()
	j.cancel()
	j.wg.Wait()
	return nil
}

// JanusPublisher is the Signaler of a Janus videoroom publisher: the
// client offers, Janus answers; Janus never renegotiates it.
type JanusPublisher struct {
	j    *Janus
	room int
	h    *janusHandle
	feed uint64
	none chan string
}

// NewJanusPublisher returns a publisher signaler for room.
func NewJanusPublisher(j *Janus, room int) *JanusPublisher {
	return &JanusPublisher{j: j, room: room, none: make(chan string)}
}

// Feed is the publisher's feed id once joined.
func (p *JanusPublisher) Feed() uint64 { return p.feed }

// Join joins as a publisher and publishes the offer.
func (p *JanusPublisher) Join(ctx context.Context, _, identity string, _, _ bool, offer string) (string, error) {
	h, err := p.j.attach(ctx)
	if err != nil {
		return "", err
	}
	p.h = h
	ev, err := h.message(ctx, map[string]any{"request": "joinandconfigure", "ptype": "publisher", "room": p.room,
		"display": identity, "audio": true, "video": true}, &janusJSEP{Type: "offer", SDP: offer})
	if err != nil {
		return "", err
	}
	h.trickleDone(ctx)
	var d struct {
		ID uint64 `json:"id"`
	}
	_ = json.Unmarshal(ev.PluginData.Data, &d)
	p.feed = d.ID
	if ev.JSEP == nil {
		return "", errors.New("janus: publisher join without answer")
	}
	return ev.JSEP.SDP, nil
}

// Offers never delivers: Janus does not renegotiate publishers.
func (p *JanusPublisher) Offers() <-chan string { return p.none }

// Answer is never called.
func (p *JanusPublisher) Answer(context.Context, string) error { return nil }

// Close detaches the handle.
func (p *JanusPublisher) Close() error {
	if p.h != nil {
		p.h.detach()
	}
	return nil
}

// DialJanusSubscriber subscribes one receive-only client to feeds of room
// (Janus multistream: one peer connection, Janus offers).
func DialJanusSubscriber(ctx context.Context, api *webrtc.API, j *Janus, room int, feeds []uint64) (*Client, error) {
	h, err := j.attach(ctx)
	if err != nil {
		return nil, err
	}
	streams := make([]map[string]any, 0, len(feeds))
	for _, f := range feeds {
		streams = append(streams, map[string]any{"feed": f})
	}
	var ev janusMsg
	for try := 0; ; try++ {
		// A feed is not subscribable until Janus has set its publisher's
		// media up, a little after the publisher sees "connected".
		ev, err = h.message(ctx, map[string]any{"request": "join", "ptype": "subscriber", "room": room, "streams": streams}, nil)
		if err == nil || try >= 20 || !strings.Contains(err.Error(), "428") {
			break
		}
		select {
		case <-time.After(250 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	if err != nil {
		h.detach()
		return nil, err
	}
	if ev.JSEP == nil {
		h.detach()
		return nil, errors.New("janus: subscriber join without offer")
	}
	return dialOffered(ctx, api, &janusSubSig{h: h}, ev.JSEP.SDP)
}

// janusSubSig is the Signaler of a Janus subscriber after its offer.
type janusSubSig struct {
	h *janusHandle
}

func (s *janusSubSig) Join(context.Context, string, string, bool, bool, string) (string, error) {
	return "", errors.New("janus subscriber: join is done by DialJanusSubscriber")
}
func (s *janusSubSig) Offers() <-chan string { return nil }
func (s *janusSubSig) Answer(ctx context.Context, sdp string) error {
	_, err := s.h.message(ctx, map[string]any{"request": "start"}, &janusJSEP{Type: "answer", SDP: sdp})
	s.h.trickleDone(ctx)
	return err
}
func (s *janusSubSig) Close() error { s.h.detach(); return nil }
