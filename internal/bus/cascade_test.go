package bus

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

// Only the controller commands the cascade, a node reads only its own
// commands and publishes only its own reports: a node cannot forge a
// command (to another node or to itself), read another node's, or report
// as another node.
func TestCascadePermissions(t *testing.T) {
	sc := newBusScene(t, EmbeddedConfig{Listen: "127.0.0.1:-1"})
	ctl := connectAs(t, sc.e, RoleController, "")
	a, evil := connectAs(t, sc.e, RoleNode, "nodeA"), connectAs(t, sc.e, RoleNode, "evil")
	cmds, stolen := make(chan CascadeCommand, 10), make(chan CascadeCommand, 10)
	if _, err := a.SubscribeCascadeCommands("nodeA", func(c CascadeCommand) { cmds <- c }); err != nil {
		t.Fatal(err)
	}
	_, _ = evil.SubscribeCascadeCommands("nodeA", func(c CascadeCommand) { stolen <- c })
	reports := make(chan CascadeReport, 10)
	if _, err := ctl.SubscribeCascadeReports(func(r CascadeReport) { reports <- r }); err != nil {
		t.Fatal(err)
	}
	_ = a.Conn().Flush()
	_ = evil.Conn().Flush()
	_ = ctl.Conn().Flush()

	forged := CascadeCommand{Node: "nodeA", Controller: "evil", Lease: 99, Routes: []CascadeHop{{Dst: 1, Via: 666}}, Time: time.Now()}
	b, _ := json.Marshal(forged)
	_ = evil.Conn().Publish(CascadeCommandSubject("nodeA"), b)
	_ = a.Conn().Publish(CascadeCommandSubject("nodeA"), b)
	rb, _ := json.Marshal(CascadeReport{Node: "nodeA", ID: 1, Time: time.Now()})
	_ = evil.Conn().Publish(CascadeReportSubject("nodeA"), rb)
	_ = evil.Conn().Flush()
	_ = a.Conn().Flush()

	good := CascadeCommand{Node: "nodeA", Controller: "ctl-1", Lease: 3, Gen: 1,
		Peers: []CascadePeer{{ID: 2, Addr: "127.0.0.1:7890"}}, Routes: []CascadeHop{{Dst: 2, Via: 2}}, Time: time.Now()}
	if err := ctl.PublishCascadeCommand(good); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "nodeA gets the controller's command", func() bool { return len(cmds) > 0 })
	if c := <-cmds; c.Controller != "ctl-1" {
		t.Fatalf("nodeA got %+v first: a forged command arrived", c)
	}
	if err := a.PublishCascadeReport(CascadeReport{Node: "nodeA", ID: 7, Links: []CascadeLink{{Peer: 2, RTTUs: 300, Up: true}}, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "the controller gets nodeA's report", func() bool { return len(reports) > 0 })
	if r := <-reports; r.ID != 7 {
		t.Fatalf("controller got %+v first: a forged report arrived", r)
	}
	if len(cmds) != 0 || len(stolen) != 0 {
		t.Fatalf("forged or stolen commands: %d %d", len(cmds), len(stolen))
	}
	if err := ctl.PublishCascadeCommand(CascadeCommand{Node: "nodeA", Controller: "c", Lease: 1, Peers: []CascadePeer{{ID: 2, Addr: "0.0.0.0:1"}}}); err == nil {
		t.Fatal("a command with an unspecified peer address was sent")
	}
}
