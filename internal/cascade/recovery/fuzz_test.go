package recovery

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/cascade/relaywire"
)

// FuzzReceiver drives a Receiver with arbitrary data and parity messages
// (sequence numbers, group shapes and shards a peer holding the link key
// might send): it must not panic, and what it delivers is never longer
// than a shard.
func FuzzReceiver(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 1, 3, 'a', 'b', 'c', 1, 0, 0, 0, 1, 2, 1, 0, 0, 3, 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReceiver(ReceiverConfig{Window: 64, MaxMissing: 32})
		now := time.Unix(0, 0)
		deliver := func(_ uint32, msg []byte) {
			if len(msg) > relaywire.MaxShardLen-2 {
				t.Fatalf("delivered %d bytes", len(msg))
			}
		}
		for len(b) >= 6 {
			kind, seq, n := b[0], binary.BigEndian.Uint32(b[1:]), int(b[5])
			b = b[6:]
			n = min(n, len(b))
			payload := b[:n]
			b = b[n:]
			if kind%2 == 0 {
				r.OnData(seq, payload, now, deliver)
			} else if len(payload) >= 3 {
				p := relaywire.Parity{Base: seq, K: payload[0]%relaywire.MaxShards + 1, M: payload[1]%relaywire.MaxShards + 1, Shard: payload[2:]}
				p.Index = payload[0] % p.M
				if len(p.Shard) > 0 {
					r.OnParity(&p, deliver)
				}
			}
			now = now.Add(time.Millisecond)
			r.NackDue(now, 0, nil)
		}
	})
}
