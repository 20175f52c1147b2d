package cluster

import (
	"encoding/json"
	"testing"
)

func FuzzDecodeNode(f *testing.F) {
	f.Add([]byte(`{"node":"sfu-1","region":"eu","udp":"192.0.2.1:7882","load":{"peers":3},"last_seen":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"node":"a b","udp":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeNode(b)
		if err == nil && r.Validate() != nil {
			t.Fatal("decoded an invalid record")
		}
	})
}

func FuzzDecodeRoom(f *testing.F) {
	f.Add([]byte(`{"room":"r1","node":"sfu-1","participants":4,"updated":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"room":"r1","node":"sfu-1","participants":-1}`))
	f.Add([]byte(`{"room":"r1","node":"sfu-1","participants":3,"nodes":[{"node":"sfu-1","participants":1},{"node":"sfu-2","participants":2}]}`))
	f.Add([]byte(`{"room":"r1","node":"sfu-1","participants":3,"nodes":[{"node":"sfu-2","participants":2},{"node":"sfu-1","participants":1}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRoom(b)
		if err != nil {
			return
		}
		if r.Validate() != nil {
			t.Fatal("decoded an invalid record")
		}
		// an old record (no nodes) is read as its node holding them all
		if (r.Participants > 0) != (len(r.Nodes) > 0) {
			t.Fatalf("participants %d over %d nodes", r.Participants, len(r.Nodes))
		}
		// what a controller writes back decodes to the same
		out, _ := json.Marshal(r)
		back, err := DecodeRoom(out)
		if err != nil || back.Participants != r.Participants || len(back.Nodes) != len(r.Nodes) {
			t.Fatalf("rewritten %s: %+v, %v", out, back, err)
		}
	})
}

func FuzzDecodeLease(f *testing.F) {
	f.Add([]byte(`{"holder":"ctl-1","ttl_ms":2000,"renewed":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"holder":"","ttl_ms":0}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeLease(b)
		if err == nil && r.Validate() != nil {
			t.Fatal("decoded an invalid record")
		}
	})
}

func FuzzDecodeCascadeEpoch(f *testing.F) {
	f.Add([]byte(`{"epoch":3,"rotated":"2026-01-01T00:00:00Z","controller":"ctl-1"}`))
	f.Add([]byte(`{"epoch":70000,"rotated":"2026-01-01T00:00:00Z","controller":"ctl-1"}`))
	f.Add([]byte(`{"epoch":1,"controller":"a.b"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeCascadeEpoch(b)
		if err == nil && r.Validate() != nil {
			t.Fatal("decoded an invalid record")
		}
	})
}
