package relay

import (
	"testing"

	"go.uber.org/goleak"
)

// Every endpoint a test starts is closed and its goroutines gone when the
// tests end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
