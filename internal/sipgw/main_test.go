package sipgw

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaves a goroutine behind, with one
// exception in sipgo (v1.7.2), not in this package: a transaction whose
// timer fires after its user agent closed (an ACK retransmitted for a late
// 2xx: "ACK loop retransimission" in the log) makes sipgo open a new UDP
// connection with a reader goroutine after TransportUDP.Close cleared the
// pool, and nothing closes it again (transport_udp.go createConnection).
// It was seen once in a CI run of the whole package on a loaded machine.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/emiago/sipgo/sip.(*TransportUDP).readUDPConnection"))
}
