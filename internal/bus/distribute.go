package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/nats-io/nats.go"
)

// Messages and subjects of the distribute role (the media distribution
// server, internal/distribute): a controller (a signal-role credential)
// adds and removes streams and receivers on one distribute node by
// request/reply on traverse.distribute.<node>.rpc. See docs/distribute.md.

const (
	subjectDistributePrefix = "traverse.distribute."
	subjectDistributeRPC    = ".rpc"
)

// DistributeSubject is where distribute node takes DistributeRequest
// messages; "*" matches every node.
func DistributeSubject(node string) string {
	return subjectDistributePrefix + node + subjectDistributeRPC
}

// DistributeOp is what a DistributeRequest asks.
type DistributeOp string

// Distribute operations.
const (
	DistributeAddStream       DistributeOp = "add_stream"       // a stream with its first receivers
	DistributeRemoveStream    DistributeOp = "remove_stream"    // a stream and all its receivers
	DistributeAddReceivers    DistributeOp = "add_receivers"    // receivers to a stream
	DistributeRemoveReceivers DistributeOp = "remove_receivers" // receivers from a stream
	DistributeList            DistributeOp = "list"             // every stream with its counters
)

// MaxDistributeReceivers bounds the receivers of one request (a stream
// has at most the node's --max-receivers anyway).
const MaxDistributeReceivers = 1024

// DistributeRequest asks a distribute node to change or list its table.
// A stream is named by Dst (an address the node listens on) and, when
// set, SSRC.
type DistributeRequest struct {
	Op        DistributeOp     `json:"op"`
	Dst       netip.AddrPort   `json:"dst,omitzero"`
	SSRC      *uint32          `json:"ssrc,omitempty"`
	Source    netip.Addr       `json:"source,omitzero"`
	Receivers []netip.AddrPort `json:"receivers,omitempty"`
}

// Validate checks a request's shape (the node checks the addresses
// against its listening ports and address policy).
func (r *DistributeRequest) Validate() error {
	if len(r.Receivers) > MaxDistributeReceivers {
		return fmt.Errorf("%w: distribute: %d receivers, at most %d", ErrBadMessage, len(r.Receivers), MaxDistributeReceivers)
	}
	switch r.Op {
	case DistributeList:
		return nil
	case DistributeAddStream, DistributeRemoveStream, DistributeAddReceivers, DistributeRemoveReceivers:
	default:
		return fmt.Errorf("%w: distribute: unknown op %q", ErrBadMessage, r.Op)
	}
	if !r.Dst.IsValid() || r.Dst.Port() == 0 {
		return fmt.Errorf("%w: distribute: dst must be an address and port", ErrBadMessage)
	}
	if r.Source.IsValid() && r.Op != DistributeAddStream {
		return fmt.Errorf("%w: distribute: source is set with add_stream only", ErrBadMessage)
	}
	switch r.Op {
	case DistributeAddReceivers, DistributeRemoveReceivers:
		if len(r.Receivers) == 0 {
			return fmt.Errorf("%w: distribute: %s without receivers", ErrBadMessage, r.Op)
		}
	case DistributeRemoveStream:
		if len(r.Receivers) != 0 {
			return fmt.Errorf("%w: distribute: remove_stream takes no receivers", ErrBadMessage)
		}
	}
	for _, a := range r.Receivers {
		if !a.IsValid() || a.Port() == 0 {
			return fmt.Errorf("%w: distribute: receiver %v must be an address and port", ErrBadMessage, a)
		}
	}
	return nil
}

// DistributeReply answers a DistributeRequest: an error, or for list the
// node's streams (internal/distribute's StreamInfo list, as JSON).
type DistributeReply struct {
	Node    string          `json:"node"`
	Error   *Error          `json:"error,omitempty"`
	Streams json.RawMessage `json:"streams,omitempty"`
}

// Validate checks a reply.
func (r *DistributeReply) Validate() error {
	if r.Error != nil && r.Error.Status == "" {
		return fmt.Errorf("%w: distribute reply error without status", ErrBadMessage)
	}
	return nil
}

// Distribute sends req to distribute node and returns its reply; a reply
// carrying an error is returned as that *Error.
func (c *Client) Distribute(ctx context.Context, node string, req DistributeRequest) (DistributeReply, error) {
	return call[DistributeReply](ctx, c, node, DistributeSubject(node), "distribute node", &req, false)
}

func (r *DistributeReply) from() (string, *Error) { return r.Node, r.Error }

// DistributeHandler serves one valid request; a non-nil error becomes the
// reply's Error (classified by AsError).
type DistributeHandler func(req DistributeRequest) (DistributeReply, error)

// HandleDistribute serves node's requests one at a time, in arrival order
// (table changes are quick and their order matters). A request that does
// not decode or validate is answered with StatusBadRequest without
// reaching h, and calls bad (when set) so the role counts it.
func (c *Client) HandleDistribute(node string, h DistributeHandler, bad func(error)) (*Subscription, error) {
	if !ValidName(node) {
		return nil, fmt.Errorf("%w: node %q", ErrBadSubjectToken, node)
	}
	s, err := c.newSubscription()
	if err != nil {
		return nil, err
	}
	return c.listen(s, DistributeSubject(node), func(m *nats.Msg) {
		req, err := Decode[DistributeRequest](m.Data)
		var rep DistributeReply
		if err != nil {
			c.bad.Add(1)
			if bad != nil {
				bad(err)
			}
			rep.Error = &Error{Status: StatusBadRequest, Message: err.Error()}
		} else if rep, err = h(req); err != nil {
			rep = DistributeReply{Error: AsError(err)}
		}
		rep.Node = node
		c.respond(m, rep)
	})
}
