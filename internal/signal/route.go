package signal

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Node choice, HTTP-DNS style (docs/cluster.md, "Routing"): GET
// /v1/route?ip=CLIENT_IP[&room=ROOM] answers the node a client at that
// address would join, by the same rules as join (placer.choose): the
// room's node while it has capacity; else the client's region (the
// longest --region-map prefix), least loaded first; else the nearest
// region with a node (RegionNear), least loaded first; else any node.
// Without ip, the requester's own address (as join sees it) is used.

// RoomDirectory tells where a room lives in the cluster (the room
// directory the controller keeps: cluster.Directory).
type RoomDirectory interface {
	// RoomNode returns room's node and whether that node was declared
	// dead or draining (replace: place the room again); ok is false when
	// the room is unknown.
	RoomNode(ctx context.Context, room string) (node string, replace, ok bool)
}

// RoomLister is what a RoomDirectory also offers when it can list the
// cluster's rooms: the room API then answers for the whole cluster, not
// only for the participants joined through this signal server.
type RoomLister interface {
	ListRooms(ctx context.Context) ([]DirectoryRoom, error)
}

// DirectoryRoom is one room as the cluster's directory records it.
type DirectoryRoom struct {
	Name string
	// Node is the room's home; Nodes every node holding participants of
	// it, with their counts.
	Node         string
	Nodes        map[string]int
	Participants int
}

// directoryTimeout bounds a directory lookup on the join path: a slow
// directory must not stall joins (the room is then placed by the rules
// without it).
const directoryTimeout = 250 * time.Millisecond

// ParseRegionNear parses "REGION=NEAR1,NEAR2" (a client of REGION whose
// region has no node with capacity goes to NEAR1, then NEAR2).
func ParseRegionNear(s string) (region string, near []string, err error) {
	r, list, ok := strings.Cut(s, "=")
	r = strings.TrimSpace(r)
	if !ok || r == "" || strings.TrimSpace(list) == "" {
		return "", nil, fmt.Errorf("%w: region order %q: want REGION=NEAR1,NEAR2", ErrConfig, s)
	}
	for _, n := range strings.Split(list, ",") {
		if n = strings.TrimSpace(n); n != "" && n != r {
			near = append(near, n)
		}
	}
	return r, near, nil
}

// maxRouteIP bounds the ip parameter (the longest IPv6 text with a zone is
// well under it).
const maxRouteIP = 64

// parseRouteIP parses the ip parameter of /v1/route: an IPv4 or IPv6
// address without zone, IPv4-mapped IPv6 unmapped.
func parseRouteIP(s string) (netip.Addr, error) {
	if len(s) > maxRouteIP {
		return netip.Addr{}, fmt.Errorf("%w: ip longer than %d bytes", ErrMessage, maxRouteIP)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: ip: %w", ErrMessage, err)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%w: ip with a zone", ErrMessage)
	}
	return a.Unmap(), nil
}

// RouteAnswer is the body of a /v1/route answer.
type RouteAnswer struct {
	// Node is the chosen SFU node's id, Region its region, Public its
	// media address (when it announced a public one).
	Node   string `json:"node"`
	Region string `json:"region,omitempty"`
	Public string `json:"public,omitempty"`
	// ClientRegion is the region the client's address maps to.
	ClientRegion string `json:"client_region,omitempty"`
}

type routeMetrics struct {
	requests *prometheus.CounterVec // by result
}

func newRouteMetrics(reg prometheus.Registerer) (*routeMetrics, error) {
	m := &routeMetrics{requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "traverse_signal_route_requests_total",
		Help: "GET /v1/route answers, by result (ok, bad_request, no_node)."}, []string{"result"})}
	for _, r := range []string{"ok", "bad_request", "no_node"} {
		m.requests.WithLabelValues(r)
	}
	if err := reg.Register(m.requests); err != nil {
		return nil, err
	}
	return m, nil
}

func (s *Server) serveRoute(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	client := clientIP(r, s.cfg.TrustedProxies)
	if v := q.Get("ip"); v != "" || q.Has("ip") {
		a, err := parseRouteIP(v)
		if err != nil {
			s.rm.requests.WithLabelValues("bad_request").Inc()
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		client = a
	}
	room := q.Get("room")
	if room != "" && !ValidRoom(room) {
		s.rm.requests.WithLabelValues("bad_request").Inc()
		http.Error(w, "bad room name", http.StatusBadRequest)
		return
	}
	n, err := s.route(room, client)
	if err != nil {
		s.rm.requests.WithLabelValues("no_node").Inc()
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	s.rm.requests.WithLabelValues("ok").Inc()
	ans := RouteAnswer{Node: n.ID, Region: n.Region, ClientRegion: s.placer.region(client)}
	if n.Public.IsValid() {
		ans.Public = n.Public.String()
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(ans)
}

// route chooses a node for a client of room (empty: no room) without
// holding a place: what join would choose now.
func (s *Server) route(room string, client netip.Addr) (Node, error) {
	nodes := s.cfg.Backend.Nodes()
	roomNode, skip := "", ""
	if room != "" {
		roomNode, skip = s.directoryNode(room)
	}
	s.mu.Lock()
	nodes = s.upLocked(without(nodes, skip)) // never a node just declared dead
	if p := s.rooms[room]; room != "" && p != nil && roomNode == "" {
		roomNode = p.node
	}
	s.mu.Unlock()
	return s.placer.choose(nodes, room, roomNode, client)
}

// without returns nodes but the one with id skip (a node the directory
// says is dead or draining, which announcements may still list for a
// moment).
func without(nodes []Node, skip string) []Node {
	if skip == "" {
		return nodes
	}
	out := make([]Node, 0, len(nodes))
	for _, n := range nodes {
		if n.ID != skip {
			out = append(out, n)
		}
	}
	return out
}

// directoryNode asks the room directory where room lives: node, or, when
// the directory says its node is to be replaced, that node as skip.
func (s *Server) directoryNode(room string) (node, skip string) {
	if s.cfg.Directory == nil {
		return "", ""
	}
	ctx, cancel := context.WithTimeout(s.ctx, directoryTimeout)
	defer cancel()
	n, replace, ok := s.cfg.Directory.RoomNode(ctx, room)
	switch {
	case !ok:
		return "", ""
	case replace:
		return "", n
	}
	return n, ""
}
