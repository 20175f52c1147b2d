package mediaproxy

import (
	"errors"
	"net/netip"
	"testing"
)

func TestDescriptorRoundTrip(t *testing.T) {
	tests := []Descriptor{
		{Op: OpUpsert, Flags: FlagCallerOutside | FlagSSRC, Kind: KindAudio, SSRC: 0xdeadbeef, Index: 0, CallID: "a@b",
			Client: netip.MustParseAddrPort("192.0.2.1:4000"), Server: netip.MustParseAddrPort("10.0.0.5:20000")},
		{Op: OpUpsert, Flags: FlagCalleeOutside, Kind: KindVideo, Index: 1, CallID: "x",
			Client: netip.MustParseAddrPort("[2001:db8::1]:5004"), ClientRTCP: netip.MustParseAddrPort("[2001:db8::1]:5009")},
		{Op: OpDelete, Index: AllStreams, CallID: "gone"},
		{Op: OpQuery, Index: 3, CallID: "q"},
	}
	for _, d := range tests {
		b := AppendDescriptor(nil, &d)
		got, n, err := ParseDescriptor(b)
		if err != nil || n != len(b) || got != d {
			t.Errorf("round trip of %+v: got %+v, %d/%d, %v", d, got, n, len(b), err)
		}
	}
}

func TestDescriptorErrors(t *testing.T) {
	good := AppendDescriptor(nil, &Descriptor{Op: OpUpsert, Flags: FlagCallerOutside, CallID: "c"})
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrShortDescriptor},
		{"version", append([]byte{9}, good[1:]...), ErrVersion},
		{"op", append([]byte{1, 7}, good[2:]...), ErrBadOp},
		{"both outside", append([]byte{1, 1, 3}, good[3:]...), ErrDirection},
		{"no side outside", append([]byte{1, 1, 0}, good[3:]...), ErrDirection},
		{"truncated", good[:len(good)-1], ErrShortDescriptor},
		{"family", append(append([]byte{}, good[:len(good)-4]...), 5, 0, 0, 0), ErrBadAddress},
		{"no call id", AppendDescriptor(nil, &Descriptor{Op: OpQuery}), ErrCallID},
	}
	for _, tt := range tests {
		if _, _, err := ParseDescriptor(tt.b); !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
}

func FuzzParseDescriptor(f *testing.F) {
	f.Add(AppendDescriptor(nil, &Descriptor{Op: OpUpsert, Flags: FlagCallerOutside | FlagSSRC, SSRC: 7, CallID: "c",
		Client: netip.MustParseAddrPort("192.0.2.1:4000"), Server: netip.MustParseAddrPort("[::1]:9")}))
	f.Add(AppendRequest(nil, 1, &Descriptor{Op: OpDelete, Index: AllStreams, CallID: "zz"}))
	f.Add([]byte{1, 1, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, n, err := ParseDescriptor(b)
		if err != nil {
			return
		}
		if n > len(b) {
			t.Fatalf("consumed %d of %d", n, len(b))
		}
		b2 := AppendDescriptor(nil, &d)
		d2, _, err := ParseDescriptor(b2)
		if err != nil || d2 != d {
			t.Fatalf("re-parse: %+v vs %+v (%v)", d2, d, err)
		}
		_, _, _ = ParseRequest(b)
		_, _, _, _ = ParseReply(b)
	})
}

func FuzzDemux(f *testing.F) {
	f.Add([]byte{0x80, 0, 0, 1, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef})
	f.Add([]byte{0x80, 200, 0, 6, 0xde, 0xad, 0xbe, 0xef})
	f.Add([]byte{0x40})
	f.Fuzz(func(t *testing.T, b []byte) {
		if s, err := RTPSSRC(b); err == nil && (len(b) < 12 || s != uint32(b[8])<<24|uint32(b[9])<<16|uint32(b[10])<<8|uint32(b[11])) {
			t.Fatal("bad RTP SSRC")
		}
		if _, err := RTCPSenderSSRC(b); err == nil && len(b) < 8 {
			t.Fatal("short RTCP accepted")
		}
	})
}
