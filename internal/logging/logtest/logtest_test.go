package logtest

import (
	"strings"
	"testing"
)

// TestBufferMax: past Max the writes are taken (no error, full length) and
// dropped, so the buffer keeps the start of a long log; without Max it
// keeps everything.
func TestBufferMax(t *testing.T) {
	for _, tc := range []struct {
		max  int
		want string
	}{
		{0, "aaaabbbbcccc"},
		{4, "aaaabbbb"}, // "bbbb" goes in while 4 bytes are held, not over
		{5, "aaaabbbb"},
	} {
		b := Buffer{Max: tc.max}
		for _, w := range []string{"aaaa", "bbbb", "cccc"} {
			if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
				t.Fatalf("max %d: Write(%q) = %d, %v", tc.max, w, n, err)
			}
		}
		if got := b.String(); got != tc.want {
			t.Errorf("max %d: kept %q, want %q", tc.max, got, tc.want)
		}
		if got := strings.Join(b.Lines(), ""); got != tc.want {
			t.Errorf("max %d: lines %q", tc.max, got)
		}
	}
}
