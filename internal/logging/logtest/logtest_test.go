package logtest

import "testing"

// TestBufferMax: past Max the writes are taken (no error, full length) and
// dropped, so the buffer keeps the start of a long log; without Max it
// keeps everything.
func TestBufferMax(t *testing.T) {
	kept := func(max int) string {
		b := Buffer{Max: max}
		for _, w := range []string{"aaaa", "bbbb", "cccc"} {
			if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
				t.Fatalf("max %d: Write(%q) = %d, %v", max, w, n, err)
			}
		}
		return b.String()
	}
	for max, want := range map[int]string{
		0: "aaaabbbbcccc",
		4: "aaaabbbb", // "bbbb" goes in while 4 bytes are held, not over
		5: "aaaabbbb",
	} {
		if got := kept(max); got != want {
			t.Errorf("max %d: kept %q, want %q", max, got, want)
		}
	}
}
