package p2p

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/testkit"
)

// TestAttacks mounts each attack on a live direct connection from a third
// socket that knows the session id (it is in every packet's clear header):
// garbage, forged packets, replays of genuine data, probes and acks; none
// is delivered or moves the path, and each is counted.
func TestAttacks(t *testing.T) {
	st := startSTUN(t)
	a, b := pairUp(t, baseOpts(st), baseOpts(st))
	bAddr := b.bases[0].LocalAddr()
	aPath := a.Path()
	atk, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer atk.Close()
	send := func(p []byte) {
		if _, err := atk.WriteToUDPAddrPort(p, bAddr); err != nil {
			t.Fatal(err)
		}
	}

	// Forged: right session, made-up nonce and ciphertext.
	forged := appendHeader(nil, Header{Type: typeData, Session: b.keys.session, Nonce: 1 << 40})
	forged = append(forged, make([]byte, 8+tagLen)...)
	send(forged)
	testkit.WaitFor(t, 2*time.Second, "forged counted", func() bool { return b.Stats().Forged == 1 })

	// Another session's packet.
	foreign := appendHeader(nil, Header{Type: typeProbe, Nonce: 5})
	send(append(foreign, make([]byte, probeBodyLen+tagLen)...))
	testkit.WaitFor(t, 2*time.Second, "foreign counted", func() bool { return b.Stats().Foreign == 1 })

	// Malformed: a p2p type byte on a runt.
	send([]byte{typeData, 1, 2})
	testkit.WaitFor(t, 2*time.Second, "malformed counted", func() bool { return b.Stats().Malformed >= 1 })

	// A genuine data packet, captured and sent twice: delivered once.
	a.mu.Lock()
	body := binary.BigEndian.AppendUint64(nil, a.sendSeq)
	a.sendSeq++
	data := a.seal(typeData, append(body, "captured"...))
	a.mu.Unlock()
	send(data)
	send(data)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	p, err := b.ReadDatagram(ctx)
	if err != nil || string(p) != "captured" {
		t.Fatalf("captured datagram: %q %v", p, err)
	}
	testkit.WaitFor(t, 2*time.Second, "replay counted", func() bool { return b.Stats().Replayed == 1 })

	// A genuine probe replayed from the attacker's address: no ack goes
	// there (a first copy would be answered, but it was already seen).
	a.mu.Lock()
	probe := a.seal(typeProbe, append(binary.BigEndian.AppendUint64(nil, 7), byte(PathDirect)))
	a.mu.Unlock()
	if err := a.bases[0].WriteTo(probe, bAddr); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 2*time.Second, "probe accepted", func() bool { return b.Stats().Replayed == 1 })
	send(probe)
	testkit.WaitFor(t, 2*time.Second, "replayed probe counted", func() bool { return b.Stats().Replayed == 2 })
	_ = atk.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := atk.ReadFromUDPAddrPort(make([]byte, 1500)); err == nil {
		t.Fatalf("attacker got a %d-byte answer", n)
	}

	// A genuine ack from b, replayed to a from the attacker: the path
	// does not move.
	b.mu.Lock()
	ack := b.seal(typeAck, binary.BigEndian.AppendUint64(nil, 9))
	b.mu.Unlock()
	aAddr := a.bases[0].LocalAddr()
	if _, err := atk.WriteToUDPAddrPort(ack, aAddr); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 2*time.Second, "stray ack counted", func() bool { return a.Stats().StrayAcks >= 1 })
	if _, err := atk.WriteToUDPAddrPort(ack, aAddr); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 2*time.Second, "replayed ack counted", func() bool { return a.Stats().Replayed == 1 })
	if got := a.Path(); got.Remote != aPath.Remote || got.Kind != PathDirect {
		t.Fatalf("path moved to %v", got)
	}
	exchange(t, a, b, 20)
}
