package bus

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// Role is what a bus connection is for; it decides the subjects the
// connection may publish and subscribe to (Permissions).
type Role string

// Roles.
const (
	// RoleSignal is a signal server (and "traverse load", which speaks to
	// nodes as one): it calls nodes and follows their messages.
	RoleSignal Role = "signal"
	// RoleNode is one SFU node: it serves its own requests and publishes
	// on its own subjects only.
	RoleNode Role = "sfu"
	// RoleDistribute is one distribute node: it takes its own requests
	// (DistributeSubject) and answers them, nothing else.
	RoleDistribute Role = "distribute"
	// RoleRelay is one relay node (traverse relay): it announces itself
	// and reads its own open messages only (relay.go).
	RoleRelay Role = "relay"
)

// Identity is one bus credential: an NATS nkey user (an Ed25519 key pair;
// the server keeps only the public key and checks a signature of its
// nonce, so the secret never crosses the network) with its role and, for
// RoleNode, the node id the key speaks for.
type Identity struct {
	Role Role
	// Node is the node id of a RoleNode identity.
	Node string

	kp  nkeys.KeyPair
	pub string
}

// NewIdentity generates a credential for role (and node, for RoleNode).
func NewIdentity(role Role, node string) (*Identity, error) {
	if err := checkRole(role, node); err != nil {
		return nil, err
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("bus: new nkey: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("bus: new nkey: %w", err)
	}
	return &Identity{Role: role, Node: node, kp: kp, pub: pub}, nil
}

func checkRole(role Role, node string) error {
	switch role {
	case RoleSignal, RoleController:
		if node != "" {
			return fmt.Errorf("%w: a %s credential names no node", ErrCredentials, role)
		}
	case RoleNode, RoleDistribute, RoleRelay:
		if !ValidName(node) {
			return fmt.Errorf("%w: node %q: %w", ErrCredentials, node, ErrBadSubjectToken)
		}
	default:
		return fmt.Errorf("%w: unknown role %q", ErrCredentials, role)
	}
	return nil
}

// Public returns the identity's public nkey ("U...").
func (id *Identity) Public() string { return id.pub }

// String names the identity ("signal", "sfu n1").
func (id *Identity) String() string {
	if id.Node != "" {
		return string(id.Role) + " " + id.Node
	}
	return string(id.Role)
}

// sign signs the server's nonce (nats.Nkey's callback).
func (id *Identity) sign(nonce []byte) ([]byte, error) { return id.kp.Sign(nonce) }

// File format of a credentials file: comment lines naming the role and the
// node, then the nkey seed. nats.go's NkeyOptionFromSeed and the nats CLI
// read it as a plain seed file (they skip lines that are not a seed).
const (
	credsRoleLine = "# role: "
	credsNodeLine = "# node: "
)

// WriteFile writes the identity's credentials file with mode 0600,
// replacing path atomically (a reader never sees half a key). The file
// holds the secret seed: whoever reads it speaks as this identity.
func (id *Identity) WriteFile(path string) error {
	seed, err := id.kp.Seed()
	if err != nil {
		return fmt.Errorf("bus: credentials: %w", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# traverse bus credentials (NATS nkey user %s); keep secret\n", id.pub)
	b.WriteString(credsRoleLine + string(id.Role) + "\n")
	if id.Node != "" {
		b.WriteString(credsNodeLine + id.Node + "\n")
	}
	b.Write(seed)
	b.WriteString("\n")
	tmp, err := os.CreateTemp(filepath.Dir(path), ".creds-*")
	if err != nil {
		return fmt.Errorf("bus: credentials: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("bus: credentials: %w", err)
	}
	if _, err := tmp.Write(b.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("bus: credentials: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("bus: credentials: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("bus: credentials: %w", err)
	}
	return nil
}

// LoadIdentity reads a credentials file written by WriteFile. It refuses
// a file that group or others may read: a leaked seed is a leaked role.
func LoadIdentity(path string) (*Identity, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("bus: credentials: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s (mode %v): chmod 600 it", ErrCredentialsMode, path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bus: credentials: %w", err)
	}
	defer wipe(b)
	id, err := ParseIdentity(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return id, nil
}

// ParseIdentity parses the contents of a credentials file.
func ParseIdentity(b []byte) (*Identity, error) {
	id := &Identity{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, credsRoleLine):
			id.Role = Role(strings.TrimSpace(strings.TrimPrefix(line, credsRoleLine)))
		case strings.HasPrefix(line, credsNodeLine):
			id.Node = strings.TrimSpace(strings.TrimPrefix(line, credsNodeLine))
		}
	}
	if err := checkRole(id.Role, id.Node); err != nil {
		return nil, err
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCredentials, err)
	}
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return nil, fmt.Errorf("%w: not an nkey user seed", ErrCredentials)
	}
	id.kp, id.pub = kp, pub
	return id, nil
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 'x'
	}
}

// Inbox subjects: nats.go's request/reply uses a reply subscription under
// _INBOX. Only signal makes requests, so only signal may subscribe to
// inboxes; nodes answer through the server's response permission (a node
// may publish once to the reply subject of a request it received, within
// responseTTL, and nowhere else under _INBOX).
const (
	inboxWildcard = "_INBOX.>"
	responseTTL   = 2 * time.Minute
)

// Permissions returns what a connection of role (node, for RoleNode) may
// publish and subscribe to. Everything not allowed is denied:
//   - a signal server calls any node, announces session ufrags for any node,
//     and follows every node's announcements, session messages and room
//     events;
//   - node N publishes only under traverse.sfu.N. (its announcements,
//     session messages, room events and ufrags), takes only its own
//     requests, answers only requests it received, and reads other nodes'
//     ufrag announcements (to route a stray STUN binding). It cannot call
//     another node, read another node's requests or any session's messages,
//     nor speak for another node;
//   - distribute node D takes only its own requests (DistributeSubject)
//     and answers them; it publishes nothing else.
func Permissions(role Role, node string) *server.Permissions {
	switch role {
	case RoleSignal:
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: append([]string{
				NodeRPCSubject("*"), SessionAnnounceSubject("*"), DistributeSubject("*"), RelayOpenSubject("*"),
			}, signalControlPublish()...)},
			Subscribe: &server.SubjectPermission{Allow: []string{
				NodeAnnounceSubject("*"), SessionSubject("*", "*"), RoomEventsSubject("*", "*"), inboxWildcard, RelayAnnounceSubject("*"),
				NodeDownSubject("*"),
			}},
		}
	case RoleRelay:
		pub, sub := relayPermissions(node)
		return &server.Permissions{Publish: &server.SubjectPermission{Allow: pub}, Subscribe: &server.SubjectPermission{Allow: sub}}
	case RoleController:
		return controllerPermissions()
	case RoleNode:
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{
				NodeAnnounceSubject(node), SessionSubject(node, "*"), RoomEventsSubject(node, "*"), SessionAnnounceSubject(node),
				CascadeReportSubject(node),
			}},
			Subscribe: &server.SubjectPermission{Allow: []string{
				NodeRPCSubject(node), SessionAnnounceSubject("*"), CascadeCommandSubject(node),
			}},
			Response: &server.ResponsePermission{MaxMsgs: 1, Expires: responseTTL},
		}
	case RoleDistribute:
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Deny: []string{">"}},
			Subscribe: &server.SubjectPermission{Allow: []string{DistributeSubject(node)}},
			Response:  &server.ResponsePermission{MaxMsgs: 1, Expires: responseTTL},
		}
	}
	// Unknown role: nothing at all.
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Deny: []string{">"}},
		Subscribe: &server.SubjectPermission{Deny: []string{">"}},
	}
}

// authenticator is the embedded server's client authentication: nkey
// users whose set can grow while the server runs (serve adds its node's
// identity when the node starts).
type authenticator struct {
	m *embeddedMetrics

	mu    sync.RWMutex // guards users
	users map[string]*Identity
}

func (a *authenticator) allow(id *Identity) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.users[id.pub] = id
}

// Check implements server.Authentication: the client must present a known
// public nkey and a signature of this connection's nonce made with its
// seed. Only plain client connections are accepted (no leaf nodes,
// WebSocket or MQTT).
func (a *authenticator) Check(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT {
		a.m.authFailures.Inc()
		return false
	}
	o := c.GetOpts()
	a.mu.RLock()
	id := a.users[o.Nkey]
	a.mu.RUnlock()
	if id == nil || o.Sig == "" {
		a.m.authFailures.Inc()
		return false
	}
	sig, err := base64.RawURLEncoding.DecodeString(o.Sig)
	if err != nil {
		if sig, err = base64.StdEncoding.DecodeString(o.Sig); err != nil {
			a.m.authFailures.Inc()
			return false
		}
	}
	pk, err := nkeys.FromPublicKey(o.Nkey)
	if err != nil || pk.Verify(c.GetNonce(), sig) != nil {
		a.m.authFailures.Inc()
		return false
	}
	c.RegisterUser(&server.User{Username: id.String(), Permissions: Permissions(id.Role, id.Node)})
	a.m.logins.WithLabelValues(string(id.Role)).Inc()
	return true
}
