package loadgen

import "testing"

// TestSeqStateLossRepair: gaps count as lost until a retransmission or a
// reordered packet fills them; duplicates and packets from before the
// first never take loss back; a jump is not loss.
func TestSeqStateLossRepair(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		seqs                 []uint16
		lost, late, repaired uint64
		last                 uint16
	}{
		{"in order", []uint16{1, 2, 3, 4}, 0, 0, 0, 4},
		{"gap", []uint16{1, 2, 5}, 2, 0, 0, 5},
		{"gap repaired by a retransmission", []uint16{1, 2, 5, 3, 4}, 0, 2, 2, 5},
		{"half repaired", []uint16{1, 2, 5, 4}, 1, 1, 1, 5},
		{"duplicate of a received packet", []uint16{1, 2, 3, 2}, 0, 1, 0, 3},
		{"retransmission arriving twice", []uint16{1, 3, 2, 2}, 0, 2, 1, 3},
		{"older than the first", []uint16{10, 11, 9}, 0, 1, 0, 11},
		{"wraps", []uint16{65534, 65535, 1, 0}, 0, 1, 1, 1},
		{"jump is not loss", []uint16{1, 2, 5000, 5001}, 0, 0, 0, 5001},
		{"too old to repair", append(append([]uint16{1}, seqRange(3, 1500)...), 2), 1, 1, 0, 1500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s RecvStats
			var q seqState
			for _, x := range tc.seqs {
				q.add(&s, x)
			}
			if s.Lost() != tc.lost || s.Late() != tc.late || s.Repaired() != tc.repaired || s.LastSeq() != tc.last {
				t.Errorf("lost %d late %d repaired %d last %d, want %d %d %d %d",
					s.Lost(), s.Late(), s.Repaired(), s.LastSeq(), tc.lost, tc.late, tc.repaired, tc.last)
			}
		})
	}
}

func seqRange(from, to uint16) []uint16 {
	var out []uint16
	for x := from; x <= to; x++ {
		out = append(out, x)
	}
	return out
}
