package turn

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"

	"github.com/traverse-rtc/traverse/internal/persource"
	"github.com/traverse-rtc/traverse/internal/udpio"
)

// handleMessage answers one STUN message from a client: requests get a
// response, Send indications are relayed, anything else is counted.
func (s *Server) handleMessage(b []byte, key fiveTuple, out sender, st *relayStats) {
	if len(b) >= stunHeaderSize && binary.BigEndian.Uint16(b) == typeSendIndication {
		s.relaySend(key, b, st)
		return
	}
	m := &stun.Message{Raw: b}
	if err := m.Decode(); err != nil {
		st.bad++
		s.cfg.Log.Debug("turn: malformed message", "from", key.client.String(), "bytes", len(b), "err", err)
		return
	}
	switch m.Type.Class {
	case stun.ClassRequest:
	case stun.ClassIndication:
		return // Binding indications are keepalives; nothing to answer
	default:
		st.bad++
		return
	}
	// A request whose FINGERPRINT does not match is discarded (RFC 8489
	// section 7.3).
	if m.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(m) != nil {
		st.bad++
		return
	}
	r := request{s: s, m: m, key: key, out: out, from: key.client, now: time.Now()}
	if m.Type.Method != stun.MethodBinding {
		if unknown := unknownRequired(m); len(unknown) > 0 {
			r.fail(stun.CodeUnknownAttribute, []stun.Setter{stun.UnknownAttributes(unknown)})
			return
		}
	}
	switch m.Type.Method {
	case stun.MethodBinding:
		r.binding()
	case stun.MethodAllocate:
		r.allocate()
	case stun.MethodRefresh:
		r.refresh()
	case stun.MethodCreatePermission:
		r.createPermission()
	case stun.MethodChannelBind:
		r.channelBind()
	case stun.MethodConnect:
		r.connect()
	case stun.MethodConnectionBind:
		r.connectionBind()
	default:
		r.fail(stun.CodeBadRequest, nil)
	}
}

// knownRequired are the comprehension-required attributes (type below
// 0x8000) a TURN request may carry that this server understands or may
// safely ignore.
var knownRequired = map[stun.AttrType]bool{
	stun.AttrMappedAddress: true, stun.AttrUsername: true, stun.AttrMessageIntegrity: true,
	stun.AttrErrorCode: true, stun.AttrRealm: true, stun.AttrNonce: true, stun.AttrXORMappedAddress: true,
	stun.AttrChannelNumber: true, stun.AttrLifetime: true, stun.AttrXORPeerAddress: true, stun.AttrData: true,
	stun.AttrXORRelayedAddress: true, stun.AttrEvenPort: true, stun.AttrRequestedTransport: true,
	stun.AttrDontFragment: true, stun.AttrReservationToken: true, stun.AttrRequestedAddressFamily: true,
	stun.AttrMessageIntegritySHA256: true, stun.AttrPasswordAlgorithm: true, stun.AttrUserhash: true,
	stun.AttrPriority: true, stun.AttrUseCandidate: true, stun.AttrConnectionID: true,
	stun.AttrChangeRequest: true, stun.AttrPadding: true, stun.AttrResponsePort: true,
}

// unknownRequired lists the comprehension-required attributes of m this
// server does not know (answered with 420, RFC 8489 section 7.3.1).
func unknownRequired(m *stun.Message) []stun.AttrType {
	var out []stun.AttrType
	for _, a := range m.Attributes {
		if a.Type < 0x8000 && !knownRequired[a.Type] {
			out = append(out, a.Type)
		}
	}
	return out
}

// request is one request being answered.
type request struct {
	s    *Server
	m    *stun.Message
	key  fiveTuple
	out  sender
	from netip.AddrPort
	now  time.Time

	user  string
	integ []byte // set once authenticated: responses carry MESSAGE-INTEGRITY
}

// method is the request's method for metric labels: a known name or
// "other", so outside input cannot grow the label set.
func (r *request) method() string {
	switch m := r.m.Type.Method; m {
	case stun.MethodBinding, stun.MethodAllocate, stun.MethodRefresh, stun.MethodCreatePermission,
		stun.MethodChannelBind, stun.MethodConnect, stun.MethodConnectionBind:
		return m.String()
	}
	return "other"
}

func (r *request) reply(class stun.MessageClass, setters ...stun.Setter) {
	all := make([]stun.Setter, 0, len(setters)+5)
	all = append(all, stun.NewTransactionIDSetter(r.m.TransactionID), stun.NewType(r.m.Type.Method, class))
	all = append(all, setters...)
	if r.integ != nil {
		// SOFTWARE only to authenticated clients: an answer to an
		// unauthenticated source stays as small as it can be (issue 10,
		// amplification).
		if r.s.cfg.Software != "" {
			all = append(all, stun.NewSoftware(r.s.cfg.Software))
		}
		all = append(all, stun.MessageIntegrity(r.integ))
	} else if !r.s.answers.Allow(r.from.Addr()) {
		r.s.m.limited.WithLabelValues("unauth_answers").Inc()
		return
	}
	if r.m.Contains(stun.AttrFingerprint) {
		all = append(all, stun.Fingerprint)
	}
	resp, err := stun.Build(all...)
	if err != nil {
		r.s.cfg.Log.Debug("turn: build response", "err", err)
		return
	}
	r.out.send(resp.Raw)
}

func (r *request) ok(setters ...stun.Setter) {
	r.s.m.requests.WithLabelValues(r.method(), "ok").Inc()
	r.reply(stun.ClassSuccessResponse, setters...)
}

func (r *request) fail(code stun.ErrorCode, extra []stun.Setter) {
	r.s.m.requests.WithLabelValues(r.method(), codeLabel(code)).Inc()
	setters := append([]stun.Setter{stun.ErrorCodeAttribute{Code: code, Reason: reason(code)}}, extra...)
	r.reply(stun.ClassErrorResponse, setters...)
}

func codeLabel(c stun.ErrorCode) string {
	switch c {
	case stun.CodeBadRequest:
		return "400"
	case stun.CodeUnknownAttribute:
		return "420"
	case stun.CodeUnauthorized:
		return "401"
	case stun.CodeForbidden:
		return "403"
	case stun.CodeAllocMismatch:
		return "437"
	case stun.CodeStaleNonce:
		return "438"
	case stun.CodeAddrFamilyNotSupported:
		return "440"
	case stun.CodeWrongCredentials:
		return "441"
	case stun.CodeUnsupportedTransProto:
		return "442"
	case stun.CodePeerAddrFamilyMismatch:
		return "443"
	case stun.CodeAllocQuotaReached:
		return "486"
	case stun.CodeInsufficientCapacity:
		return "508"
	}
	return "500"
}

func reason(c stun.ErrorCode) []byte {
	switch c {
	case stun.CodeBadRequest:
		return []byte("Bad Request")
	case stun.CodeUnknownAttribute:
		return []byte("Unknown Attribute")
	case stun.CodeUnauthorized:
		return []byte("Unauthorized")
	case stun.CodeForbidden:
		return []byte("Forbidden")
	case stun.CodeAllocMismatch:
		return []byte("Allocation Mismatch")
	case stun.CodeStaleNonce:
		return []byte("Stale Nonce")
	case stun.CodeAddrFamilyNotSupported:
		return []byte("Address Family not Supported")
	case stun.CodeWrongCredentials:
		return []byte("Wrong Credentials")
	case stun.CodeUnsupportedTransProto:
		return []byte("Unsupported Transport Protocol")
	case stun.CodePeerAddrFamilyMismatch:
		return []byte("Peer Address Family Mismatch")
	case stun.CodeAllocQuotaReached:
		return []byte("Allocation Quota Reached")
	case stun.CodeInsufficientCapacity:
		return []byte("Insufficient Capacity")
	}
	return []byte("Server Error")
}

// challenge answers 401 or 438 with the realm and a fresh nonce for the
// client's 5-tuple.
func (r *request) challenge(code stun.ErrorCode) {
	r.integ = nil
	r.fail(code, []stun.Setter{stun.NewRealm(r.s.cfg.Realm), stun.NewNonce(r.s.nonces.issue(r.key, r.now))})
}

func (r *request) authFailure(reason, user string) {
	r.s.m.authFailures.WithLabelValues(reason).Inc()
	r.s.cfg.Log.Info("turn: authentication failed", "reason", reason, "from", r.from.String(), "user", user)
	r.s.fails.record(persource.Key(r.from.Addr()), user, r.now.UnixNano())
}

// authenticate checks the long-term credential (RFC 8489 section 9.2.4).
// On failure it has answered (or, when rate limited, decided not to).
func (r *request) authenticate() bool {
	s := r.s
	src := persource.Key(r.from.Addr())
	if s.fails.sourceLimited(src, r.now.UnixNano()) {
		s.m.authFailures.WithLabelValues("rate_limited_source").Inc()
		return false
	}
	if !r.m.Contains(stun.AttrMessageIntegrity) {
		r.challenge(stun.CodeUnauthorized)
		return false
	}
	var user stun.Username
	var realm stun.Realm
	var nonce stun.Nonce
	if user.GetFrom(r.m) != nil || realm.GetFrom(r.m) != nil || nonce.GetFrom(r.m) != nil {
		r.fail(stun.CodeBadRequest, nil)
		return false
	}
	name := string(user)
	if s.fails.userLimited(src, name, r.now.UnixNano()) {
		s.m.authFailures.WithLabelValues("rate_limited").Inc()
		return false
	}
	// A ConnectionBind comes on a new TCP or TLS connection with the
	// control connection's nonce (RFC 6062 section 5.4).
	anyPort := r.m.Type.Method == stun.MethodConnectionBind && r.out.stream != nil
	if !s.nonces.valid(string(nonce), r.key, r.now, anyPort) {
		s.m.authFailures.WithLabelValues("stale_nonce").Inc()
		r.challenge(stun.CodeStaleNonce)
		return false
	}
	if string(realm) != s.cfg.Realm {
		r.authFailure("unknown_user", name)
		r.challenge(stun.CodeUnauthorized)
		return false
	}
	pass, ok := s.password(name)
	if !ok && s.cfg.AuthSecret != "" {
		if exp, isREST := restExpiry(name); isREST {
			switch {
			case !r.now.Before(exp):
				r.authFailure("expired_credential", name)
				r.challenge(stun.CodeUnauthorized)
				return false
			case s.cfg.RESTMaxLifetime > 0 && exp.Sub(r.now) > s.cfg.RESTMaxLifetime:
				r.authFailure("lifetime_too_long", name)
				r.challenge(stun.CodeUnauthorized)
				return false
			}
			pass, ok = restPassword(s.cfg.AuthSecret, name), true
		}
	}
	if !ok {
		r.authFailure("unknown_user", name)
		r.challenge(stun.CodeUnauthorized)
		return false
	}
	key := longTermKey(name, s.cfg.Realm, pass)
	if err := stun.MessageIntegrity(key).Check(r.m); err != nil {
		r.authFailure("bad_integrity", name)
		r.challenge(stun.CodeUnauthorized)
		return false
	}
	r.user, r.integ = name, key
	if sc := r.out.stream; sc != nil {
		sc.authed.Store(true)
	}
	return true
}

// owned authenticates a request on an existing allocation and returns it
// (437 when there is none, 441 when another user asks).
func (r *request) owned() *allocation {
	if !r.authenticate() {
		return nil
	}
	a := r.s.lookup(r.key)
	if a == nil {
		r.fail(stun.CodeAllocMismatch, nil)
		return nil
	}
	if a.user != r.user {
		r.s.m.authFailures.WithLabelValues("wrong_credentials").Inc()
		r.fail(stun.CodeWrongCredentials, nil)
		return nil
	}
	return a
}

func (r *request) binding() {
	r.ok(&stun.XORMappedAddress{IP: r.from.Addr().AsSlice(), Port: int(r.from.Port())})
}

func lifetimeSetter(d time.Duration) stun.Setter {
	return rawAttr{stun.AttrLifetime, binary.BigEndian.AppendUint32(nil, uint32(d/time.Second))}
}

type rawAttr struct {
	t stun.AttrType
	v []byte
}

func (a rawAttr) AddTo(m *stun.Message) error { m.Add(a.t, a.v); return nil }

// lifetime returns the lifetime the client asked for, clamped (RFC 8656
// section 7.2); ok is false when the attribute is malformed.
func (r *request) lifetime() (time.Duration, bool, bool) {
	v, err := r.m.Get(stun.AttrLifetime)
	if err != nil {
		return r.s.cfg.DefaultLifetime, false, true
	}
	if len(v) != 4 {
		return 0, true, false
	}
	d := time.Duration(binary.BigEndian.Uint32(v)) * time.Second
	return d, true, true
}

// allocate answers an Allocate (RFC 8656 section 7.2; RFC 6062 section
// 5.1 for TCP): a retransmission gets its first answer, a new request
// is checked, takes a quota slot and gets a relay socket.
func (r *request) allocate() {
	if a := r.s.lookup(r.key); a != nil {
		// A retransmitted Allocate gets the same answer (RFC 8656 section
		// 7.2); a new one on a taken 5-tuple gets 437.
		if !r.authenticate() {
			return
		}
		if a.tid == r.m.TransactionID && a.user == r.user {
			a.mu.Lock()
			left := time.Duration(a.expires - r.now.UnixNano())
			a.mu.Unlock()
			r.allocated(a, left)
			return
		}
		r.fail(stun.CodeAllocMismatch, nil)
		return
	}
	if !r.authenticate() {
		return
	}
	tcp, d, ok := r.allocateParams()
	if !ok || !r.takeQuota() {
		return
	}
	if tcp {
		r.allocateTCP(d)
		return
	}
	r.allocateUDP(d)
}

// allocateParams checks an Allocate's attributes and returns whether it
// asks for a TCP allocation and its lifetime; on false the request has
// been answered with an error.
func (r *request) allocateParams() (tcp bool, d time.Duration, ok bool) {
	s := r.s
	v, err := r.m.Get(stun.AttrRequestedTransport)
	if err != nil || len(v) != 4 {
		r.fail(stun.CodeBadRequest, nil)
		return false, 0, false
	}
	tcp = v[0] == transportTCP
	switch {
	case v[0] != transportUDP && !tcp:
		r.fail(stun.CodeUnsupportedTransProto, nil)
		return false, 0, false
	case tcp && (r.out.stream == nil || r.out.stream.datagram || r.m.Contains(stun.AttrDontFragment) ||
		r.m.Contains(stun.AttrEvenPort) || r.m.Contains(stun.AttrReservationToken)):
		// RFC 6062 section 5.1: TCP allocations over TCP or TLS only,
		// and none of these attributes.
		r.fail(stun.CodeBadRequest, nil)
		return false, 0, false
	}
	if fam, err := r.m.Get(stun.AttrRequestedAddressFamily); err == nil {
		if len(fam) != 4 || (fam[0] != 1 && fam[0] != 2) {
			r.fail(stun.CodeBadRequest, nil)
			return false, 0, false
		}
		if (fam[0] == 1) != s.cfg.RelayIP.Is4() {
			r.fail(stun.CodeAddrFamilyNotSupported, nil)
			return false, 0, false
		}
	}
	// RESERVATION-TOKEN with EVEN-PORT or REQUESTED-ADDRESS-FAMILY: 400
	// (RFC 8656 section 7.2).
	if r.m.Contains(stun.AttrReservationToken) && (r.m.Contains(stun.AttrEvenPort) || r.m.Contains(stun.AttrRequestedAddressFamily)) {
		r.fail(stun.CodeBadRequest, nil)
		return false, 0, false
	}
	d, _, ok = r.lifetime()
	if !ok {
		r.fail(stun.CodeBadRequest, nil)
		return false, 0, false
	}
	return tcp, min(max(d, s.cfg.DefaultLifetime), s.cfg.MaxLifetime), true
}

// takeQuota applies the allocation rate of the source and the total and
// per-user quotas, and holds the user's slot while the socket opens
// (releaseQuota gives it back). On false the request has been answered,
// or the server is closing.
func (r *request) takeQuota() bool {
	s := r.s
	if !s.allocRate.Allow(r.from.Addr()) {
		s.m.limited.WithLabelValues("allocate").Inc()
		r.fail(stun.CodeAllocQuotaReached, nil)
		return false
	}
	s.mu.Lock()
	var full string // the quota reached, if any
	switch {
	case s.closed:
		s.mu.Unlock()
		return false
	case s.cfg.MaxAllocations > 0 && len(s.allocs) >= s.cfg.MaxAllocations:
		full = "total"
	case s.cfg.MaxAllocationsPerUser > 0 && s.perUser[r.user] >= s.cfg.MaxAllocationsPerUser:
		full = "user"
	default:
		s.perUser[r.user]++
	}
	s.mu.Unlock()
	if full != "" {
		s.m.quotaHits.WithLabelValues(full).Inc()
		r.fail(stun.CodeAllocQuotaReached, nil)
		return false
	}
	return true
}

// releaseUserLocked gives back one of user's allocation slots; s.mu is
// held.
func (s *Server) releaseUserLocked(user string) {
	if s.perUser[user]--; s.perUser[user] <= 0 {
		delete(s.perUser, user)
	}
}

// releaseQuota gives back the slot takeQuota held for a request that got
// no allocation.
func (r *request) releaseQuota() {
	r.s.mu.Lock()
	r.s.releaseUserLocked(r.user)
	r.s.mu.Unlock()
}

// relaySocket is the relay socket an Allocate got: a fresh one (fd,
// relayed) or a shared one (shared); token is the RESERVATION-TOKEN of a
// port pair held for a later Allocate.
type relaySocket struct {
	eng     *engine
	shared  *relaySock
	fd      int
	relayed netip.AddrPort
	token   *[8]byte
}

// openRelaySocket opens the relay socket of a UDP allocation on an
// engine: the reserved port its RESERVATION-TOKEN names, an even port
// with the next one held (EVEN-PORT R), any port, or once the range is
// exhausted a socket shared with other allocations.
func (r *request) openRelaySocket() (relaySocket, error) {
	s := r.s
	rs := relaySocket{eng: s.engs[r.out.shard]}
	if r.out.stream != nil {
		rs.eng = s.engs[int(s.next.Add(1))%len(s.engs)]
	}
	even, reserve := evenPort(r.m)
	useToken := r.m.Contains(stun.AttrReservationToken)
	var err error
	switch {
	case useToken:
		rs.fd, rs.relayed, err = s.takeReservation(r.m, r.now)
	case reserve:
		var tok [8]byte
		rs.fd, rs.relayed, tok, err = s.openRelayPair(rs.eng, r.now)
		rs.token = &tok
	default:
		rs.fd, rs.relayed, err = s.openRelay(rs.eng, even)
	}
	if errors.Is(err, ErrNoRelayPort) && !s.cfg.NoSharing && !even && !useToken {
		s.mu.Lock()
		rs.shared = s.shareRelayLocked(rs.eng)
		s.mu.Unlock()
		if rs.shared != nil {
			s.m.quotaHits.WithLabelValues("shared").Inc()
			rs.eng = rs.shared.eng
			return rs, nil
		}
	}
	return rs, err
}

// allocateUDP finishes an Allocate for REQUESTED-TRANSPORT=UDP once the
// user's quota slot is held.
func (r *request) allocateUDP(d time.Duration) {
	s := r.s
	got, err := r.openRelaySocket()
	if err != nil {
		r.releaseQuota()
		switch {
		case errors.Is(err, ErrNoRelayPort):
			s.m.quotaHits.WithLabelValues("ports").Inc()
		case errors.Is(err, ErrNoReservation):
			s.m.quotaHits.WithLabelValues("reservation").Inc()
		default:
			s.cfg.Log.Warn("turn: relay socket", "err", err)
		}
		r.fail(stun.CodeInsufficientCapacity, nil)
		return
	}
	eng, rs, fresh := got.eng, got.shared, got.shared == nil
	if fresh {
		rs = &relaySock{fd: got.fd, addr: got.relayed, eng: eng}
	}
	a := &allocation{key: r.key, out: r.out, eng: eng, sock: rs, fd: rs.fd, relayed: rs.addr, user: r.user, integ: r.integ,
		tid: r.m.TransactionID, expires: r.now.Add(d).UnixNano(), token: got.token}
	s.mu.Lock()
	if s.closed || s.allocs[r.key] != nil {
		// Closed, or a concurrent Allocate on the same 5-tuple won.
		s.releaseUserLocked(r.user)
		if !fresh {
			rs.users--
		}
		s.mu.Unlock()
		if fresh {
			eng.remove(got.fd)
		}
		r.fail(stun.CodeAllocMismatch, nil)
		return
	}
	s.allocs[r.key] = a
	if fresh {
		rs.users, rs.single = 1, a
		s.byFD[int32(got.fd)] = rs
		s.byRelay[got.relayed] = rs
	}
	s.mu.Unlock()
	if r.out.stream != nil {
		r.out.stream.setAlloc(a)
	}
	if fresh {
		if err := eng.add(got.fd); err != nil {
			s.cfg.Log.Warn("turn: epoll add", "err", err)
		}
	}
	s.m.allocations.Inc()
	r.allocated(a, d)
}

func (r *request) allocated(a *allocation, left time.Duration) {
	setters := []stun.Setter{
		&xorAddr{t: stun.AttrXORRelayedAddress, ap: a.relayed},
		lifetimeSetter(left),
		&stun.XORMappedAddress{IP: r.from.Addr().AsSlice(), Port: int(r.from.Port())},
	}
	if a.token != nil {
		setters = append(setters, reservationToken(*a.token))
	}
	r.ok(setters...)
}

type xorAddr struct {
	t  stun.AttrType
	ap netip.AddrPort
}

func (x *xorAddr) AddTo(m *stun.Message) error {
	return stun.XORMappedAddress{IP: x.ap.Addr().AsSlice(), Port: int(x.ap.Port())}.AddToAs(m, x.t)
}

func (r *request) refresh() {
	a := r.owned()
	if a == nil {
		return
	}
	d, _, ok := r.lifetime()
	if !ok {
		r.fail(stun.CodeBadRequest, nil)
		return
	}
	if d == 0 {
		r.s.deleteAllocation(a)
		r.ok(lifetimeSetter(0))
		return
	}
	d = min(max(d, r.s.cfg.DefaultLifetime), r.s.cfg.MaxLifetime)
	a.mu.Lock()
	a.expires = r.now.Add(d).UnixNano()
	a.mu.Unlock()
	r.s.offloadSync(a)
	r.ok(lifetimeSetter(d))
}

// peers returns every XOR-PEER-ADDRESS of the request.
func (r *request) peers() ([]netip.AddrPort, bool) {
	var out []netip.AddrPort
	for _, at := range r.m.Attributes {
		if at.Type != stun.AttrXORPeerAddress {
			continue
		}
		ap, err := parseXORAddress(at.Value, r.m.TransactionID[:])
		if err != nil {
			return nil, false
		}
		out = append(out, ap)
	}
	return out, len(out) > 0
}

// checkPeer answers 443 or 403 for a peer the allocation may not reach.
func (r *request) checkPeer(a *allocation, p netip.AddrPort, endpoint bool) bool {
	if !r.s.peerAllowed(p, endpoint, a.tcp != nil) {
		r.s.m.refusedPeers.Inc()
		r.s.cfg.Log.Debug("turn: peer refused", "from", r.from.String(), "user", r.user, "peer", p.String())
		r.fail(stun.CodeForbidden, nil)
		return false
	}
	// Refusal first: a filtered peer is a 403 whatever its family.
	if p.Addr().Unmap().Is4() != a.relayed.Addr().Is4() {
		r.fail(stun.CodePeerAddrFamilyMismatch, nil)
		return false
	}
	return true
}

// sharedConflict refuses a peer that another allocation on the same shared
// relay socket already permits: packets from it could not be told apart.
func (r *request) sharedConflict() {
	r.s.m.quotaHits.WithLabelValues("shared_peer").Inc()
	r.fail(stun.CodeForbidden, nil)
}

// maxPermissions caps the permissions of one allocation, so that one
// client cannot grow the server's memory without bound (508 beyond it).
const maxPermissions = 1024

func (r *request) createPermission() {
	a := r.owned()
	if a == nil {
		return
	}
	peers, ok := r.peers()
	if !ok {
		r.fail(stun.CodeBadRequest, nil)
		return
	}
	ips := make([]netip.Addr, 0, len(peers))
	for _, p := range peers {
		if !r.checkPeer(a, p, false) {
			return
		}
		ips = append(ips, p.Addr())
	}
	if !r.s.claimPeers(a, ips) {
		r.sharedConflict()
		return
	}
	exp := r.now.Add(permissionLifetime).UnixNano()
	added := 0
	a.mu.Lock()
	if len(a.perms)+len(peers) > maxPermissions {
		a.mu.Unlock()
		r.s.m.quotaHits.WithLabelValues("permissions").Inc()
		r.fail(stun.CodeInsufficientCapacity, nil)
		return
	}
	if a.perms == nil {
		a.perms = make(map[netip.Addr]int64, len(peers))
	}
	for _, p := range peers {
		if _, had := a.perms[p.Addr()]; !had {
			added++
		}
		a.perms[p.Addr()] = exp
	}
	a.mu.Unlock()
	r.s.m.permissions.Add(float64(added))
	r.s.offloadSync(a)
	r.ok()
}

func (r *request) channelBind() {
	a := r.owned()
	if a == nil {
		return
	}
	v, err := r.m.Get(stun.AttrChannelNumber)
	peers, ok := r.peers()
	if err != nil || len(v) != 4 || !ok || len(peers) != 1 {
		r.fail(stun.CodeBadRequest, nil)
		return
	}
	num := binary.BigEndian.Uint16(v)
	if num < minChannel || num > maxChannel || a.tcp != nil {
		r.fail(stun.CodeBadRequest, nil)
		return
	}
	peer := peers[0]
	if !r.checkPeer(a, peer, true) {
		return
	}
	if !r.s.claimPeers(a, []netip.Addr{peer.Addr()}) {
		r.sharedConflict()
		return
	}
	var sa udpio.Sockaddr
	if !sa.Set(peer, r.s.cfg.RelayIP.Is6()) {
		r.fail(stun.CodePeerAddrFamilyMismatch, nil)
		return
	}
	now := r.now.UnixNano()
	a.mu.Lock()
	ch := a.chans[num]
	other := a.byPeer[peer]
	// A number bound to another peer, or a peer bound to another number,
	// is a 400 (RFC 8656 section 12.2).
	if (ch != nil && ch.peer != peer) || (other != nil && other.num != num) {
		a.mu.Unlock()
		r.fail(stun.CodeBadRequest, nil)
		return
	}
	newChan, newPerm := ch == nil, false
	if ch == nil {
		ch = &channel{num: num, peer: peer, sa: sa}
		if a.chans == nil {
			a.chans = map[uint16]*channel{}
			a.byPeer = map[netip.AddrPort]*channel{}
		}
		a.chans[num] = ch
		a.byPeer[peer] = ch
	}
	ch.expires = now + int64(channelLifetime)
	if a.perms == nil {
		a.perms = map[netip.Addr]int64{}
	}
	if _, had := a.perms[peer.Addr()]; !had {
		newPerm = true
	}
	a.perms[peer.Addr()] = now + int64(permissionLifetime)
	a.mu.Unlock()
	if newChan {
		r.s.m.channels.Inc()
	}
	if newPerm {
		r.s.m.permissions.Inc()
	}
	r.s.offloadSync(a)
	r.ok()
}
