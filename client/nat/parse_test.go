package nat

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/pion/stun/v3"
)

// FuzzParseResponse feeds arbitrary datagrams to the client's response
// parser (what any host on the path can send to a test socket): it must
// never panic, and accepts only messages with the expected transaction ID.
func FuzzParseResponse(f *testing.F) {
	id := [stun.TransactionIDSize]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	ok := stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: net.IPv4(192, 0, 2, 1), Port: 4000},
		&stun.OtherAddress{IP: net.IPv4(192, 0, 2, 2), Port: 3479},
		&stun.ResponseOrigin{IP: net.IPv4(192, 0, 2, 1), Port: 3478},
		stun.Fingerprint)
	f.Add(ok.Raw)
	f.Add(stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingError, stun.CodeBadRequest).Raw)
	f.Add(stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingSuccess,
		&stun.MappedAddress{IP: net.ParseIP("2001:db8::1"), Port: 1}).Raw)
	f.Add(ok.Raw[:30])
	bad := append([]byte(nil), ok.Raw...)
	binary.BigEndian.PutUint16(bad[22:], 0xffff)
	f.Add(bad)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, accepted := parse(b, id)
		if accepted && (len(b) < 20 || [12]byte(b[8:20]) != id) {
			t.Fatalf("accepted a message with another transaction id")
		}
		_ = r
	})
}

func TestParse(t *testing.T) {
	id := [stun.TransactionIDSize]byte{1}
	m := stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: net.IPv4(192, 0, 2, 1), Port: 4000},
		&stun.OtherAddress{IP: net.IPv4(192, 0, 2, 2), Port: 3479},
		&stun.ResponseOrigin{IP: net.IPv4(192, 0, 2, 1), Port: 3478})
	r, ok := parse(m.Raw, id)
	if !ok || r.mapped.String() != "192.0.2.1:4000" || r.other.String() != "192.0.2.2:3479" || r.origin.String() != "192.0.2.1:3478" {
		t.Fatalf("got %+v %v", r, ok)
	}
	if _, ok := parse(m.Raw, [12]byte{2}); ok {
		t.Fatal("accepted another transaction")
	}
	e := stun.MustBuild(stun.NewTransactionIDSetter(id), stun.BindingError, stun.CodeUnknownAttribute)
	if r, ok := parse(e.Raw, id); !ok || r.code != 420 {
		t.Fatalf("error response: %+v %v", r, ok)
	}
}
