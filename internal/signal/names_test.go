package signal

import (
	"strings"
	"testing"

	"github.com/traverse-rtc/traverse/internal/bus"
)

// FuzzValidRoomIsBusName: a token never names a room the bus refuses, and
// every bus name is a room (issue 14: rooms of 65-128 characters were
// minted and could not join).
func FuzzValidRoomIsBusName(f *testing.F) {
	for _, s := range []string{"demo", "", strings.Repeat("r", 64), strings.Repeat("r", 65), strings.Repeat("r", 128), "a.b", "a b", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidRoom(s) != bus.ValidName(s) {
			t.Fatalf("ValidRoom(%q) = %v, bus.ValidName = %v", s, ValidRoom(s), bus.ValidName(s))
		}
	})
}
