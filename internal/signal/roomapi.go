package signal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
)

// The room API (docs/api.md): an operator's HTTP API under /v1/ on the
// signal listener, authorised by Config.AdminToken. It acts on the rooms
// and participants of this signal process, which it learns from the
// sessions' joins and leaves (registry below).

// ErrRemoved ends a session the operator removed (room API); its client
// gets class "removed".
var ErrRemoved = errors.New("removed by the operator")

// ClassRemoved is the status class of a participant removed by the
// operator or of a room it closed: do not rejoin on your own.
const ClassRemoved = "removed"

// TypeMute is the server message asking a client to stop (Muted true) or
// resume sending one of its tracks (docs/api.md).
const TypeMute = "mute"

// Room API limits.
const (
	// maxAPIBody bounds a request body of the room API.
	maxAPIBody = 64 << 10
	// maxReasonLen bounds the reason given to a removed participant.
	maxReasonLen = 200
	// MaxTokenTTL caps the lifetime of a token minted by the API.
	MaxTokenTTL = 30 * 24 * time.Hour
	// minAdminToken is the shortest admin token accepted.
	minAdminToken = 16
)

// registry is what the room API knows: this process's rooms and their
// participants, fed by the sessions.
type registry struct {
	mu    sync.Mutex // guards rooms
	rooms map[string]*apiRoom
}

type apiRoom struct {
	name    string
	started time.Time
	members map[string]*member // by participant id
}

// member is one joined session as the API shows it.
type member struct {
	ss        *session
	id        string
	room      string
	identity  string
	node      Node
	client    string
	joined    time.Time
	publish   bool
	subscribe bool
	tracks    []apiTrack
	// reason, when set, is why the API ended the session (removed,
	// room_closed): the leave event says it.
	reason string
}

type apiTrack struct {
	Track
	Muted bool `json:"muted"`
}

func newRegistry() *registry { return &registry{rooms: map[string]*apiRoom{}} }

// joined records a session that joined; it reports whether the room is
// new here (room_started).
func (g *registry) joined(m *member) (started bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := g.rooms[m.room]
	if r == nil {
		r = &apiRoom{name: m.room, started: m.joined, members: map[string]*member{}}
		g.rooms[r.name] = r
		started = true
	}
	r.members[m.id] = m
	return started
}

// moved records that session id of room is served by node now (a balanced
// group's claim).
func (g *registry) moved(room, id, node string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r := g.rooms[room]; r != nil && r.members[id] != nil {
		r.members[id].node.ID = node
	}
}

// sessionsOn returns the sessions joined on node.
func (g *registry) sessionsOn(node string) []*session {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*session
	for _, r := range g.rooms {
		for _, m := range r.members {
			if m.node.ID == node {
				out = append(out, m.ss)
			}
		}
	}
	return out
}

// left removes a session; it returns its member (nil if it never joined)
// and whether its room is now empty (room_ended).
func (g *registry) left(room, id string) (m *member, ended bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := g.rooms[room]
	if r == nil {
		return nil, false
	}
	m = r.members[id]
	if m == nil {
		return nil, false
	}
	delete(r.members, id)
	if len(r.members) == 0 {
		delete(g.rooms, room)
		ended = true
	}
	return m, ended
}

// track records a published or unpublished track of a participant of
// room, as the node told any session of the room.
func (g *registry) track(room string, ev NodeEvent) {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := g.rooms[room]
	if r == nil {
		return
	}
	m := r.members[ev.Participant.ID]
	if m == nil {
		return
	}
	i := slices.IndexFunc(m.tracks, func(t apiTrack) bool { return t.ID == ev.Track.ID && t.StreamID == ev.Track.StreamID })
	switch {
	case ev.Event == EventPublished && i < 0:
		if len(m.tracks) < 64 {
			m.tracks = append(m.tracks, apiTrack{Track: ev.Track})
		}
	case ev.Event == EventUnpublished && i >= 0:
		m.tracks = slices.Delete(m.tracks, i, i+1)
	}
}

// apiParticipant is a participant in the room listing.
type apiParticipant struct {
	ID         string     `json:"id"`
	Identity   string     `json:"identity"`
	Node       string     `json:"node"`
	Region     string     `json:"region,omitempty"`
	Client     string     `json:"client,omitempty"`
	Joined     time.Time  `json:"joined"`
	Publish    bool       `json:"publish"`
	Subscribe  bool       `json:"subscribe"`
	Path       string     `json:"path"`
	Remote     string     `json:"remote,omitempty"`
	BitrateIn  int64      `json:"bitrateIn"`
	BitrateOut int64      `json:"bitrateOut"`
	Tracks     []apiTrack `json:"tracks"`
}

type apiRoomSummary struct {
	Name         string        `json:"name"`
	Node         string        `json:"node"`
	Nodes        []apiRoomNode `json:"nodes"`
	Participants int           `json:"participants"`
	// Started is when the first participant joined through this signal
	// server; absent for a room known only from the directory.
	Started *time.Time `json:"started,omitempty"`
}

type apiRoomDetail struct {
	Name    string        `json:"name"`
	Node    string        `json:"node"`
	Nodes   []apiRoomNode `json:"nodes"`
	Started *time.Time    `json:"started,omitempty"`
	// Participants are those joined through this signal server;
	// Elsewhere counts the room's others, joined through other signal
	// servers of the cluster (from the room directory).
	Participants []apiParticipant `json:"participants"`
	Elsewhere    int              `json:"elsewhere"`
}

// clusterRooms reads the cluster's rooms from the directory, when it can
// list them; ok is false without one or when it cannot be read now (the
// API then answers for this signal server alone).
func (s *Server) clusterRooms(ctx context.Context) (map[string]DirectoryRoom, bool) {
	l, can := s.cfg.Directory.(RoomLister)
	if !can {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, directoryTimeout)
	defer cancel()
	list, err := l.ListRooms(ctx)
	if err != nil {
		return nil, false
	}
	out := make(map[string]DirectoryRoom, len(list))
	for _, r := range list {
		out[r.Name] = r
	}
	return out, true
}

// withDirectory fills a summary's home, nodes and count from the
// directory's record of the room, which counts every signal server's
// participants; the local view stands when the directory holds fewer (a
// join not yet recorded).
func (sum *apiRoomSummary) withDirectory(d DirectoryRoom) {
	if d.Participants < sum.Participants {
		return
	}
	sum.Node, sum.Participants = d.Node, d.Participants
	sum.Nodes = make([]apiRoomNode, 0, len(d.Nodes))
	for n, c := range d.Nodes {
		sum.Nodes = append(sum.Nodes, apiRoomNode{Node: n, Participants: c})
	}
	slices.SortFunc(sum.Nodes, func(a, b apiRoomNode) int { return strings.Compare(a.Node, b.Node) })
}

// apiRoomNode is one node's share of a room (with the cascade a room
// spans nodes).
type apiRoomNode struct {
	Node         string `json:"node"`
	Participants int    `json:"participants"`
}

// nodesLocked returns the room's node, the node of its earliest
// participant (where the room was placed; ties: the lower participant
// id), and every node holding participants of it with their counts,
// sorted by node.
func (r *apiRoom) nodesLocked() (string, []apiRoomNode) {
	var first *member
	nodes := []apiRoomNode{}
	for _, m := range r.members {
		if first == nil || m.joined.Before(first.joined) || m.joined.Equal(first.joined) && m.id < first.id {
			first = m
		}
		if i := slices.IndexFunc(nodes, func(n apiRoomNode) bool { return n.Node == m.node.ID }); i >= 0 {
			nodes[i].Participants++
		} else {
			nodes = append(nodes, apiRoomNode{Node: m.node.ID, Participants: 1})
		}
	}
	slices.SortFunc(nodes, func(a, b apiRoomNode) int { return strings.Compare(a.Node, b.Node) })
	if first == nil {
		return "", nodes
	}
	return first.node.ID, nodes
}

// mountAPI adds the room API's routes to the server's mux.
func (s *Server) mountAPI() {
	h := func(f func(w http.ResponseWriter, r *http.Request) (any, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { s.serveAPI(w, r, f) }
	}
	s.mux.HandleFunc("GET /v1/nodes", h(s.apiNodes))
	s.mux.HandleFunc("GET /v1/stats", h(s.apiStats))
	s.mux.HandleFunc("GET /v1/rooms", h(s.apiRooms))
	s.mux.HandleFunc("GET /v1/rooms/{room}", h(s.apiRoom))
	s.mux.HandleFunc("DELETE /v1/rooms/{room}", h(s.apiCloseRoom))
	s.mux.HandleFunc("DELETE /v1/rooms/{room}/participants/{id}", h(s.apiRemove))
	s.mux.HandleFunc("POST /v1/rooms/{room}/participants/{id}/mute", h(s.apiMute))
	s.mux.HandleFunc("POST /v1/tokens", h(s.apiToken))
	// Per method: a method-less "/v1/" would conflict with the static
	// page's "GET /".
	for _, m := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
		s.mux.HandleFunc(m+" /v1/", h(func(http.ResponseWriter, *http.Request) (any, error) {
			return nil, apiError{http.StatusNotFound, "no such endpoint"}
		}))
	}
}

// apiError is an error with its HTTP status.
type apiError struct {
	code int
	msg  string
}

func (e apiError) Error() string { return e.msg }

// serveAPI checks the origin and the admin token, then answers with f's
// value as JSON, or its error.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request, f func(http.ResponseWriter, *http.Request) (any, error)) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !s.origin.allowOrigin(r) {
		s.m.originRefused.WithLabelValues("api").Inc()
		writeAPIError(w, apiError{http.StatusForbidden, "origin not allowed"})
		return
	}
	if reason := s.checkAdmin(r); reason != "" {
		s.am.refused.WithLabelValues(reason).Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="traverse"`)
		writeAPIError(w, apiError{http.StatusUnauthorized, "admin token " + reason})
		return
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		writeAPIError(w, apiError{http.StatusServiceUnavailable, "shutting down"})
		return
	}
	v, err := f(w, r)
	if err != nil {
		s.am.requests.WithLabelValues("error").Inc()
		writeAPIError(w, err)
		return
	}
	s.am.requests.WithLabelValues("ok").Inc()
	_ = json.NewEncoder(w).Encode(v)
}

// checkAdmin returns "" when r carries the admin token, else why not
// (missing, wrong). Both sides are hashed first so that the comparison
// takes the same time whatever the lengths.
func (s *Server) checkAdmin(r *http.Request) string {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || got == "" {
		return "missing"
	}
	a, b := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(s.cfg.API.AdminToken))
	if subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
		return "wrong"
	}
	return ""
}

func writeAPIError(w http.ResponseWriter, err error) {
	var ae apiError
	if !errors.As(err, &ae) {
		ae = apiError{http.StatusInternalServerError, err.Error()}
	}
	w.WriteHeader(ae.code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": ae.msg})
}

// decodeBody parses a JSON object request body into v, refusing unknown
// fields, trailing data and bodies over maxAPIBody. An empty body leaves v
// as it is.
func decodeBody(r io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(r, maxAPIBody+1))
	if err != nil {
		return apiError{http.StatusBadRequest, "reading body: " + err.Error()}
	}
	return parseAPIBody(b, v)
}

// parseAPIBody is decodeBody's parser: pure, fuzzed (FuzzAPIBody).
func parseAPIBody(b []byte, v any) error {
	if len(b) > maxAPIBody {
		return apiError{http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", maxAPIBody)}
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil
	}
	if b[0] != '{' {
		return apiError{http.StatusBadRequest, "body must be a JSON object"}
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return apiError{http.StatusBadRequest, "body: " + err.Error()}
	}
	if d.More() {
		return apiError{http.StatusBadRequest, "body: data after the JSON object"}
	}
	return nil
}

func roomParam(r *http.Request) (string, error) {
	room := r.PathValue("room")
	if !ValidRoom(room) {
		return "", apiError{http.StatusBadRequest, fmt.Sprintf("room must be 1-%d letters, digits, '-' or '_'", MaxRoomLen)}
	}
	return room, nil
}

func (s *Server) apiNodes(http.ResponseWriter, *http.Request) (any, error) {
	type node struct {
		ID     string   `json:"id"`
		Region string   `json:"region,omitempty"`
		Public string   `json:"public,omitempty"`
		Load   float64  `json:"load"`
		Rooms  []string `json:"rooms"`
	}
	out := []node{}
	for _, n := range s.cfg.Backend.Nodes() {
		nn := node{ID: n.ID, Region: n.Region, Load: n.Load, Rooms: n.Rooms}
		if n.Public.IsValid() {
			nn.Public = n.Public.String()
		}
		if nn.Rooms == nil {
			nn.Rooms = []string{}
		}
		out = append(out, nn)
	}
	slices.SortFunc(out, func(a, b node) int { return strings.Compare(a.ID, b.ID) })
	return map[string]any{"nodes": out}, nil
}

func (s *Server) apiStats(http.ResponseWriter, *http.Request) (any, error) {
	rooms, participants := 0, 0
	s.reg.mu.Lock()
	for _, r := range s.reg.rooms {
		rooms++
		participants += len(r.members)
	}
	s.reg.mu.Unlock()
	counters := map[string]float64{}
	if s.cfg.API.Stats != nil {
		counters = s.cfg.API.Stats()
	}
	return map[string]any{"time": s.cfg.Now().UTC(), "nodes": len(s.cfg.Backend.Nodes()), "rooms": rooms,
		"participants": participants, "counters": counters}, nil
}

// apiRooms lists the rooms: the cluster's, from the room directory, when
// the directory can list them (scope "cluster"), else those with
// participants joined through this signal server (scope "process").
func (s *Server) apiRooms(_ http.ResponseWriter, r *http.Request) (any, error) {
	dir, cluster := s.clusterRooms(r.Context())
	out := []apiRoomSummary{}
	s.reg.mu.Lock()
	for _, r := range s.reg.rooms {
		node, nodes := r.nodesLocked()
		started := r.started.UTC()
		sum := apiRoomSummary{Name: r.name, Node: node, Nodes: nodes, Participants: len(r.members), Started: &started}
		if d, ok := dir[r.name]; ok {
			sum.withDirectory(d)
			delete(dir, r.name)
		}
		out = append(out, sum)
	}
	s.reg.mu.Unlock()
	for _, d := range dir {
		sum := apiRoomSummary{Name: d.Name}
		sum.withDirectory(d)
		out = append(out, sum)
	}
	slices.SortFunc(out, func(a, b apiRoomSummary) int { return strings.Compare(a.Name, b.Name) })
	scope := "process"
	if cluster {
		scope = "cluster"
	}
	return map[string]any{"rooms": out, "scope": scope}, nil
}

// Room listing limits: the node is asked for each participant's path and
// bit rates (statsTimeout each, at once), for the first maxStatsPerRoom.
const (
	statsTimeout    = time.Second
	maxStatsPerRoom = 100
)

func (s *Server) apiRoom(_ http.ResponseWriter, r *http.Request) (any, error) {
	room, err := roomParam(r)
	if err != nil {
		return nil, err
	}
	dir, _ := s.clusterRooms(r.Context())
	rec, inDir := dir[room]
	s.reg.mu.Lock()
	rm := s.reg.rooms[room]
	if rm == nil {
		s.reg.mu.Unlock()
		if !inDir {
			return nil, apiError{http.StatusNotFound, fmt.Sprintf("room %q not found", room)}
		}
		// Its participants all joined through other signal servers.
		sum := apiRoomSummary{Name: room}
		sum.withDirectory(rec)
		return apiRoomDetail{Name: room, Node: sum.Node, Nodes: sum.Nodes, Participants: []apiParticipant{}, Elsewhere: sum.Participants}, nil
	}
	node, nodes := rm.nodesLocked()
	started := rm.started.UTC()
	sum := apiRoomSummary{Name: rm.name, Node: node, Nodes: nodes, Participants: len(rm.members)}
	if inDir {
		sum.withDirectory(rec)
	}
	d := apiRoomDetail{Name: rm.name, Node: sum.Node, Nodes: sum.Nodes, Started: &started, Participants: []apiParticipant{},
		Elsewhere: sum.Participants - len(rm.members)}
	var sessions []*session
	for _, m := range rm.members {
		d.Participants = append(d.Participants, apiParticipant{ID: m.id, Identity: m.identity, Node: m.node.ID,
			Region: m.node.Region, Client: m.client, Joined: m.joined.UTC(), Publish: m.publish, Subscribe: m.subscribe,
			Tracks: append([]apiTrack{}, m.tracks...)})
	}
	s.reg.mu.Unlock()
	slices.SortFunc(d.Participants, func(a, b apiParticipant) int {
		if c := a.Joined.Compare(b.Joined); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	s.reg.mu.Lock()
	for _, p := range d.Participants {
		var ss *session
		if m := rm.members[p.ID]; m != nil {
			ss = m.ss
		}
		sessions = append(sessions, ss)
	}
	s.reg.mu.Unlock()
	// The node's view of each session, asked at once, outside the lock.
	ctx, cancel := context.WithTimeout(r.Context(), statsTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for i, ss := range sessions {
		if ss == nil || i >= maxStatsPerRoom {
			continue
		}
		ss.mu.Lock()
		link := ss.link
		ss.mu.Unlock()
		st, ok := link.(statser)
		if !ok {
			continue
		}
		wg.Add(1)
		go func(p *apiParticipant) {
			defer wg.Done()
			if x, err := st.Stats(ctx); err == nil {
				p.Path, p.Remote, p.BitrateIn, p.BitrateOut = x.Path, x.Remote, int64(x.BitrateIn), int64(x.BitrateOut)
			}
		}(&d.Participants[i])
	}
	wg.Wait()
	return d, nil
}

type reasonBody struct {
	Reason string `json:"reason"`
}

func reasonParam(r *http.Request) (string, error) {
	var b reasonBody
	if err := decodeBody(r.Body, &b); err != nil {
		return "", err
	}
	if len(b.Reason) > maxReasonLen {
		return "", apiError{http.StatusBadRequest, fmt.Sprintf("reason longer than %d bytes", maxReasonLen)}
	}
	return b.Reason, nil
}

// remove ends a member's session: its client gets a fatal error of class
// removed saying why, and the session leaves the room on its node.
func (s *Server) removeLocked(m *member, reason, message string) {
	m.reason = reason
	m.ss.send(ServerMessage{Type: TypeError, Class: ClassRemoved, Message: message, Fatal: true}, true)
}

func (s *Server) apiRemove(_ http.ResponseWriter, r *http.Request) (any, error) {
	room, err := roomParam(r)
	if err != nil {
		return nil, err
	}
	id := r.PathValue("id")
	reason, err := reasonParam(r)
	if err != nil {
		return nil, err
	}
	s.reg.mu.Lock()
	defer s.reg.mu.Unlock()
	var m *member
	if rm := s.reg.rooms[room]; rm != nil {
		m = rm.members[id]
	}
	if m == nil {
		return nil, apiError{http.StatusNotFound, fmt.Sprintf("participant %.64q not found in room %q", id, room)}
	}
	msg := ErrRemoved.Error()
	if reason != "" {
		msg += ": " + reason
	}
	s.removeLocked(m, "removed", msg)
	s.am.actions.WithLabelValues("remove").Inc()
	s.log.Info("signal api: participant removed", "room", room, "participant", id, "identity", m.identity, "reason", reason)
	return map[string]int{"removed": 1}, nil
}

func (s *Server) apiCloseRoom(_ http.ResponseWriter, r *http.Request) (any, error) {
	room, err := roomParam(r)
	if err != nil {
		return nil, err
	}
	reason, err := reasonParam(r)
	if err != nil {
		return nil, err
	}
	s.reg.mu.Lock()
	defer s.reg.mu.Unlock()
	rm := s.reg.rooms[room]
	if rm == nil {
		return nil, apiError{http.StatusNotFound, fmt.Sprintf("room %q not found", room)}
	}
	msg := "room closed by the operator"
	if reason != "" {
		msg += ": " + reason
	}
	for _, m := range rm.members {
		s.removeLocked(m, "room_closed", msg)
	}
	s.am.actions.WithLabelValues("close").Inc()
	s.log.Info("signal api: room closed", "room", room, "participants", len(rm.members), "reason", reason)
	return map[string]int{"removed": len(rm.members)}, nil
}

type muteBody struct {
	Track string `json:"track"`
	Muted *bool  `json:"muted"`
}

func (s *Server) apiMute(_ http.ResponseWriter, r *http.Request) (any, error) {
	room, err := roomParam(r)
	if err != nil {
		return nil, err
	}
	id := r.PathValue("id")
	var b muteBody
	if err := decodeBody(r.Body, &b); err != nil {
		return nil, err
	}
	if b.Track == "" || len(b.Track) > 256 || b.Muted == nil {
		return nil, apiError{http.StatusBadRequest, `body needs "track" (a track id, or "*") and "muted"`}
	}
	s.reg.mu.Lock()
	var m *member
	if rm := s.reg.rooms[room]; rm != nil {
		m = rm.members[id]
	}
	if m == nil {
		s.reg.mu.Unlock()
		return nil, apiError{http.StatusNotFound, fmt.Sprintf("participant %.64q not found in room %q", id, room)}
	}
	found := b.Track == "*"
	for i := range m.tracks {
		if b.Track == "*" || m.tracks[i].ID == b.Track {
			found = true
		}
	}
	ss := m.ss
	s.reg.mu.Unlock()
	if !found {
		return nil, apiError{http.StatusNotFound, fmt.Sprintf("track %.64q not published by %s", b.Track, id)}
	}
	// The node stops forwarding the track (when the backend can), so the
	// mute holds whatever the client does; then the client is told.
	ss.mu.Lock()
	link := ss.link
	ss.mu.Unlock()
	enforced := false
	if mu, ok := link.(muter); ok {
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
		err := mu.Mute(ctx, b.Track, *b.Muted)
		cancel()
		if err != nil {
			s.m.nodeErrors.Inc()
			return nil, apiError{http.StatusBadGateway, "node: " + err.Error()}
		}
		enforced = true
	}
	s.reg.mu.Lock()
	for i := range m.tracks {
		if b.Track == "*" || m.tracks[i].ID == b.Track {
			m.tracks[i].Muted = *b.Muted
		}
	}
	s.reg.mu.Unlock()
	msg := "muted by the operator"
	if !*b.Muted {
		msg = "unmuted by the operator"
	}
	ss.send(ServerMessage{Type: TypeMute, Track: &Track{ID: b.Track}, Muted: b.Muted, Message: msg}, false)
	s.am.actions.WithLabelValues("mute").Inc()
	s.log.Info("signal api: track muted", "room", room, "participant", id, "track", b.Track, "muted", *b.Muted, "enforced", enforced)
	return map[string]any{"muted": *b.Muted, "track": b.Track, "enforced": enforced}, nil
}

type tokenBody struct {
	Room      string `json:"room"`
	Identity  string `json:"identity"`
	Publish   *bool  `json:"publish"`
	Subscribe *bool  `json:"subscribe"`
	TTL       string `json:"ttl"`
	// Relay asks for the relay client's secret too (docs/relay-protocol.md).
	Relay bool `json:"relay"`
}

// parseTokenRequest turns a token request into claims (pure; fuzzed).
func parseTokenRequest(b []byte, now time.Time) (Claims, error) {
	var t tokenBody
	if err := parseAPIBody(b, &t); err != nil {
		return Claims{}, err
	}
	if !ValidRoom(t.Room) {
		return Claims{}, apiError{http.StatusBadRequest, fmt.Sprintf("room must be 1-%d letters, digits, '-' or '_'", MaxRoomLen)}
	}
	if !ValidIdentity(t.Identity) {
		return Claims{}, apiError{http.StatusBadRequest, fmt.Sprintf("identity must be 1-%d letters, digits, '-', '_', '.', '@' or ':'", MaxIdentityLen)}
	}
	ttl := time.Hour
	if t.TTL != "" {
		d, err := time.ParseDuration(t.TTL)
		if err != nil || d <= 0 || d > MaxTokenTTL {
			return Claims{}, apiError{http.StatusBadRequest, fmt.Sprintf("ttl must be a positive duration of at most %v", MaxTokenTTL)}
		}
		ttl = d
	}
	c := Claims{Room: t.Room, Identity: t.Identity, Publish: true, Subscribe: true, IssuedAt: now.Unix(), Expires: now.Add(ttl).Unix()}
	if t.Publish != nil {
		c.Publish = *t.Publish
	}
	if t.Subscribe != nil {
		c.Subscribe = *t.Subscribe
	}
	return c, nil
}

func (s *Server) apiToken(_ http.ResponseWriter, r *http.Request) (any, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxAPIBody+1))
	if err != nil {
		return nil, apiError{http.StatusBadRequest, "reading body: " + err.Error()}
	}
	c, err := parseTokenRequest(b, s.cfg.Now())
	if err != nil {
		return nil, err
	}
	tok, err := MintToken(s.cfg.Key, c)
	if err != nil {
		return nil, apiError{http.StatusBadRequest, err.Error()}
	}
	s.am.actions.WithLabelValues("token").Inc()
	out := map[string]any{"token": tok, "room": c.Room, "identity": c.Identity,
		"expires": time.Unix(c.Expires, 0).UTC()}
	var t tokenBody
	if json.Unmarshal(b, &t) == nil && t.Relay {
		out["relay_secret"] = hex.EncodeToString(relaywire.ClientSecret(s.cfg.Key, tok))
	}
	return out, nil
}

// apiJoined records a session that joined (room API, webhooks, log).
func (s *Server) apiJoined(ss *session, pid string, c Claims, node Node) {
	m := &member{ss: ss, id: pid, room: c.Room, identity: c.Identity, node: node, joined: s.cfg.Now(),
		publish: c.Publish, subscribe: c.Subscribe}
	if ss.client.IsValid() {
		m.client = ss.client.String()
	}
	if s.reg.joined(m) {
		s.hooks.emit(WebhookEvent{Event: WebhookRoomStarted, Room: c.Room})
	}
	s.hooks.emit(WebhookEvent{Event: WebhookParticipantJoined, Room: c.Room,
		Participant: &WebhookParticipant{ID: pid, Identity: c.Identity, Node: node.ID}})
}

// apiLeftBecause forgets a session that left its node for reason (a
// rejoin elsewhere), as apiLeft does.
func (s *Server) apiLeftBecause(room, pid, reason string) {
	s.reg.mu.Lock()
	if r := s.reg.rooms[room]; r != nil {
		if m := r.members[pid]; m != nil && m.reason == "" {
			m.reason = reason
		}
	}
	s.reg.mu.Unlock()
	s.apiLeft(room, pid, nil)
}

// apiLeft forgets a session that ended; err is its read loop's (nil after
// a leave).
func (s *Server) apiLeft(room, pid string, err error) {
	s.p2pLeft(room, pid)
	m, ended := s.reg.left(room, pid)
	if m == nil {
		return
	}
	reason := m.reason // set under the registry lock, before left took it out
	switch {
	case reason != "":
	case err == nil:
		reason = "left"
	case s.ctx.Err() != nil:
		reason = "shutdown"
	default:
		reason = "disconnected"
	}
	s.log.Info("signal leave", "room", room, "identity", m.identity, "participant", pid, "node", m.node.ID,
		"client", m.client, "reason", reason, "duration", s.cfg.Now().Sub(m.joined).Round(time.Second))
	s.hooks.emit(WebhookEvent{Event: WebhookParticipantLeft, Room: room, Reason: reason,
		Participant: &WebhookParticipant{ID: pid, Identity: m.identity, Node: m.node.ID}})
	if ended {
		s.hooks.emit(WebhookEvent{Event: WebhookRoomEnded, Room: room})
	}
}
