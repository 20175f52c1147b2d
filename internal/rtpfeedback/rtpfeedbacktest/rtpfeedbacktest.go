// Package rtpfeedbacktest holds what the tests of rtpfeedback and of its
// users (internal/sfu) need to read the feedback it sends.
package rtpfeedbacktest

import "github.com/pion/rtcp"

// Statuses expands a transport-wide congestion control feedback packet's
// chunks into one status symbol per reported packet (rtcp.TypeTCC*), in
// transport sequence order from p.BaseSequenceNumber: p.PacketStatusCount
// of them, or fewer when the chunks hold fewer.
func Statuses(p *rtcp.TransportLayerCC) []uint16 {
	var out []uint16
	for _, c := range p.PacketChunks {
		switch c := c.(type) {
		case *rtcp.RunLengthChunk:
			for range c.RunLength {
				out = append(out, c.PacketStatusSymbol)
			}
		case *rtcp.StatusVectorChunk:
			out = append(out, c.SymbolList...)
		}
	}
	return out[:min(len(out), int(p.PacketStatusCount))]
}
