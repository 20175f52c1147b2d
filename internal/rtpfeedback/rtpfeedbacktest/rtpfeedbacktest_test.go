package rtpfeedbacktest

import (
	"slices"
	"testing"

	"github.com/pion/rtcp"
)

func TestStatuses(t *testing.T) {
	const (
		no    = rtcp.TypeTCCPacketNotReceived
		small = rtcp.TypeTCCPacketReceivedSmallDelta
		large = rtcp.TypeTCCPacketReceivedLargeDelta
	)
	for _, tc := range []struct {
		name   string
		count  uint16
		chunks []rtcp.PacketStatusChunk
		want   []uint16
	}{
		{"run length", 3, []rtcp.PacketStatusChunk{&rtcp.RunLengthChunk{PacketStatusSymbol: small, RunLength: 3}}, []uint16{small, small, small}},
		{"vector then run, cut at the count", 4, []rtcp.PacketStatusChunk{
			&rtcp.StatusVectorChunk{SymbolSize: rtcp.TypeTCCSymbolSizeTwoBit, SymbolList: []uint16{large, no}},
			&rtcp.RunLengthChunk{PacketStatusSymbol: no, RunLength: 5},
		}, []uint16{large, no, no, no}},
		{"fewer than the count", 9, []rtcp.PacketStatusChunk{&rtcp.RunLengthChunk{PacketStatusSymbol: small, RunLength: 2}}, []uint16{small, small}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Statuses(&rtcp.TransportLayerCC{PacketStatusCount: tc.count, PacketChunks: tc.chunks})
			if !slices.Equal(got, tc.want) {
				t.Errorf("Statuses = %v, want %v", got, tc.want)
			}
		})
	}
}
