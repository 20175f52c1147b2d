//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || loong64)

package mediaproxy

import (
	"net/netip"

	"github.com/traverse-rtc/traverse/internal/udpio"
)

// rawSender sends the packets going inside, each from its own stream's
// inside port, in one sendmmsg per batch through udpio's raw IPv4 sender:
// a UDP socket can only send from its own port, which costs one sendto
// per packet. Replies still arrive on the streams' bound inside UDP
// sockets. It needs CAP_NET_RAW; without it the proxy sends with sendto.
type rawSender struct {
	r     *udpio.RawSender
	out   []*stream
	sizes []int
}

func newRawSender(batch int) (*rawSender, error) {
	r, err := udpio.NewRawSender(batch)
	if err != nil {
		return nil, err
	}
	return &rawSender{r: r, out: make([]*stream, batch), sizes: make([]int, batch)}, nil
}

// add queues payload from src to dst for s; false when the batch is full
// or the addresses are not IPv4. payload must stay valid until flush.
func (r *rawSender) add(s *stream, payload []byte, src, dst netip.AddrPort) bool {
	i, ok := r.r.Add(payload, src, dst)
	if ok {
		r.out[i], r.sizes[i] = s, len(payload)
	}
	return ok
}

// flush sends what add queued and calls done for each packet sent; it
// returns how many could not be sent.
func (r *rawSender) flush(done func(s *stream, n int)) (failed int) {
	n, failed := r.r.Flush()
	for i := 0; i < n; i++ {
		if r.r.Sent(i) {
			done(r.out[i], r.sizes[i])
		}
		r.out[i] = nil
	}
	return failed
}

func (r *rawSender) close() { r.r.Close() }
