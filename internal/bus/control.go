package bus

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// The controller's side of the bus (docs/cluster.md): the messages it
// publishes under traverse.ctl., the JetStream key-value buckets that hold
// the state shared by every process, and who may touch them.

// RoleController is a controller ("traverse controller"): it follows every
// node's announcements and room events, keeps the buckets, and declares
// nodes dead. Only the leader acts; every controller holds the same
// credential role.
const RoleController Role = "controller"

// Buckets of the cluster state (JetStream key-value; internal/cluster reads
// and writes them).
const (
	// BucketNodes is the node registry: node id -> cluster.NodeRecord.
	BucketNodes = "traverse-nodes"
	// BucketRooms is the room directory: room -> cluster.RoomRecord.
	BucketRooms = "traverse-rooms"
	// BucketLeader holds the controllers' leadership lease.
	BucketLeader = "traverse-leader"
)

// ControllerInboxPrefix is the reply-subject prefix of controller
// connections: their JetStream replies and watches arrive there, apart
// from _INBOX.>, so a controller credential cannot read the replies nodes
// send signal servers.
const ControllerInboxPrefix = "_INBOX_ctl"

const (
	subjectCtlPrefix   = "traverse.ctl."
	subjectCtlNodeDown = ".down"
)

// NodeDownSubject carries NodeDown for node ("*": every node).
func NodeDownSubject(node string) string {
	return subjectCtlPrefix + "node." + node + subjectCtlNodeDown
}

// NodeDown is the leading controller declaring a node dead (silent past its
// expiry) or draining: signal tells the node's clients to rejoin elsewhere.
type NodeDown struct {
	Node string `json:"node"`
	// Reason is "dead" or "draining".
	Reason string `json:"reason"`
	// Controller is the id of the controller that declared it, and Lease
	// the revision of its leadership lease then.
	Controller string    `json:"controller"`
	Lease      uint64    `json:"lease"`
	Time       time.Time `json:"time"`
}

// NodeDown reasons.
const (
	NodeDownDead     = "dead"
	NodeDownDraining = "draining"
)

// Validate checks a NodeDown.
func (d *NodeDown) Validate() error {
	if !ValidName(d.Node) || !ValidName(d.Controller) {
		return fmt.Errorf("%w: node down: %w", ErrBadMessage, ErrBadSubjectToken)
	}
	if d.Reason != NodeDownDead && d.Reason != NodeDownDraining {
		return fmt.Errorf("%w: node down: unknown reason %q", ErrBadMessage, d.Reason)
	}
	if d.Lease == 0 {
		return fmt.Errorf("%w: node down without a lease revision", ErrBadMessage)
	}
	return nil
}

// PublishNodeDown publishes d on NodeDownSubject(d.Node).
func (c *Client) PublishNodeDown(d NodeDown) error {
	return c.publish(NodeDownSubject(d.Node), &d)
}

// SubscribeNodeDown calls fn for each valid NodeDown of any node; messages
// whose node is not their subject's, or that do not validate, are dropped
// and counted in BadMessages.
func (c *Client) SubscribeNodeDown(fn func(NodeDown)) (*Subscription, error) {
	return subscribe[NodeDown](c, NodeDownSubject("*"),
		ownSubject("node down", func(d *NodeDown) string { return NodeDownSubject(d.Node) }), fn)
}

// kvStream is the JetStream stream of a key-value bucket.
func kvStream(bucket string) string { return "KV_" + bucket }

// jsAPI is a JetStream API subject.
func jsAPI(s string) string { return "$JS.API." + s }

// kvReadSubjects are what a reader of bucket publishes to: the stream's
// info (to bind the bucket) and direct gets of its keys.
func kvReadSubjects(bucket string) []string {
	st := kvStream(bucket)
	return []string{jsAPI("STREAM.INFO." + st), jsAPI("DIRECT.GET." + st + ".>")}
}

// kvWriteSubjects are what the keeper of bucket publishes to: creating and
// updating its stream, reading, writing keys, and watching keys (an
// ordered consumer, with its flow control replies).
func kvWriteSubjects(bucket string) []string {
	st := kvStream(bucket)
	return append(kvReadSubjects(bucket),
		jsAPI("STREAM.CREATE."+st), jsAPI("STREAM.UPDATE."+st), jsAPI("STREAM.MSG.GET."+st),
		jsAPI("CONSUMER.CREATE."+st+".>"), jsAPI("CONSUMER.DELETE."+st+".>"),
		"$KV."+bucket+".>", "$JS.FC."+st+".>")
}

// controllerPermissions: a controller follows nodes' announcements and
// room events, keeps the three buckets and publishes under traverse.ctl.;
// it calls no node, reads no session and cannot speak for a node. Its
// replies come to ControllerInboxPrefix only.
func controllerPermissions() *server.Permissions {
	// $JS.API.INFO (the account's JetStream limits) is asked before a
	// bucket is made.
	pub := []string{subjectCtlPrefix + ">", jsAPI("INFO"), CascadeCommandSubject("*")}
	for _, b := range []string{BucketNodes, BucketRooms, BucketLeader} {
		pub = append(pub, kvWriteSubjects(b)...)
	}
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: []string{
			NodeAnnounceSubject("*"), RoomEventsSubject("*", "*"), ControllerInboxPrefix + ".>", CascadeReportSubject("*"),
		}},
	}
}

// signalControlPublish are the subjects signal publishes to beyond its
// node calls: reads of the room directory.
func signalControlPublish() []string { return kvReadSubjects(BucketRooms) }
