package relaynode

import (
	"testing"

	"go.uber.org/goleak"
)

// Every node, link, bus connection and lab the tests start is gone when
// they end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
