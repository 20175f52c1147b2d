package turn

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/traverse-rtc/traverse/internal/turn/turntest"
)

func evenPortR() stun.Setter { return rawAttr{stun.AttrEvenPort, []byte{0x80}} }

// allocateReserving allocates with EVEN-PORT and the R bit and returns the
// relayed address and the RESERVATION-TOKEN.
func allocateReserving(t *testing.T, c *stunClient) (netip.AddrPort, []byte) {
	t.Helper()
	resp := c.do(stun.MethodAllocate, requestedUDP(), evenPortR())
	if code := errCode(resp); code != 0 {
		t.Fatalf("allocate with EVEN-PORT R: %d", code)
	}
	var x stun.XORMappedAddress
	if err := x.GetFromAs(resp, stun.AttrXORRelayedAddress); err != nil {
		t.Fatal(err)
	}
	tok, err := resp.Get(stun.AttrReservationToken)
	if err != nil || len(tok) != 8 {
		t.Fatalf("no 8-byte RESERVATION-TOKEN in the answer: %x %v", tok, err)
	}
	ip, _ := netip.AddrFromSlice(x.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(x.Port)), tok
}

// portTaken reports whether ap cannot be bound (the server holds it).
func portTaken(ap netip.AddrPort) bool {
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return true
	}
	c.Close()
	return false
}

// TestPortReservation: EVEN-PORT with the R bit (RFC 8656 sections 7.2,
// 14.6, 14.9) gets an even port and a RESERVATION-TOKEN for the next one,
// which nobody else can bind meanwhile; an Allocate with the token gets
// exactly that port and relays through it; a token works once, an unknown
// or expired one gets 508 and an expired reservation frees its port.
func TestPortReservation(t *testing.T) {
	verifyNoLeaks(t)
	s, _ := newTestServer(t, func(c *Config) { c.AllowLoopbackPeers = true })
	rtp, tok := allocateReserving(t, newSTUNClient(t, s.Addr(), testUser, testPass))
	if rtp.Port()%2 != 0 {
		t.Errorf("relayed port %d is odd", rtp.Port())
	}
	next := netip.AddrPortFrom(rtp.Addr(), rtp.Port()+1)
	if !portTaken(next) {
		t.Errorf("reserved port %v is free", next)
	}
	if got := testutil.ToFloat64(s.m.reservations); got != 1 {
		t.Errorf("reserved ports gauge = %v", got)
	}

	// The RTCP allocation takes the reserved port, and relays.
	c2 := newSTUNClient(t, s.Addr(), testUser, testPass)
	resp := c2.do(stun.MethodAllocate, requestedUDP(), rawAttr{stun.AttrReservationToken, tok})
	if code := errCode(resp); code != 0 {
		t.Fatalf("allocate with the token: %d", code)
	}
	var x stun.XORMappedAddress
	if err := x.GetFromAs(resp, stun.AttrXORRelayedAddress); err != nil || x.Port != int(next.Port()) {
		t.Fatalf("allocation with the token got port %d (%v), want %d", x.Port, err, next.Port())
	}
	if got := testutil.ToFloat64(s.m.reservations); got != 0 {
		t.Errorf("reserved ports gauge after use = %v", got)
	}
	peer := turntest.UDPEcho(t).LocalAddr().(*net.UDPAddr).AddrPort()
	if code := errCode(c2.do(stun.MethodChannelBind, channelAttr(0x4000), peerAttr(peer))); code != 0 {
		t.Fatalf("channel bind: %d", code)
	}
	if _, err := c2.c.WriteToUDPAddrPort(appendChannelData(nil, 0x4000, []byte("rtcp"), false), s.Addr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	_ = c2.c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, _, err := c2.c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("echo through the reserved port: %v", err)
	}
	if _, data, err := parseChannelData(buf[:n]); err != nil || string(data) != "rtcp" {
		t.Fatalf("echo: %x", buf[:n])
	}

	// Used once; unknown and malformed tokens: 508.
	for name, v := range map[string][]byte{"used": tok, "unknown": {1, 2, 3, 4, 5, 6, 7, 8}, "short": {1, 2, 3, 4}} {
		c := newSTUNClient(t, s.Addr(), testUser, testPass)
		if code := errCode(c.do(stun.MethodAllocate, requestedUDP(), rawAttr{stun.AttrReservationToken, v})); code != 508 {
			t.Errorf("%s token: %d, want 508", name, code)
		}
	}
	// With EVEN-PORT or REQUESTED-ADDRESS-FAMILY: 400.
	c := newSTUNClient(t, s.Addr(), testUser, testPass)
	if code := errCode(c.do(stun.MethodAllocate, requestedUDP(), rawAttr{stun.AttrReservationToken, tok},
		rawAttr{stun.AttrRequestedAddressFamily, []byte{1, 0, 0, 0}})); code != 400 {
		t.Errorf("token with REQUESTED-ADDRESS-FAMILY: %d, want 400", code)
	}

	// Expiry (30 s, run forward here): the port is free again and the
	// token is worthless.
	rtp2, tok2 := allocateReserving(t, newSTUNClient(t, s.Addr(), testUser, testPass))
	next2 := netip.AddrPortFrom(rtp2.Addr(), rtp2.Port()+1)
	s.sweep(time.Now().Add(reservationLifetime + time.Second).UnixNano())
	if portTaken(next2) {
		t.Errorf("expired reservation still holds %v", next2)
	}
	if code := errCode(newSTUNClient(t, s.Addr(), testUser, testPass).do(stun.MethodAllocate, requestedUDP(),
		rawAttr{stun.AttrReservationToken, tok2})); code != 508 {
		t.Errorf("expired token: %d, want 508", code)
	}
	if got := testutil.ToFloat64(s.m.reservations); got != 0 {
		t.Errorf("reserved ports gauge after expiry = %v", got)
	}
	// A reservation still held when the server closes is released.
	rtp3, _ := allocateReserving(t, newSTUNClient(t, s.Addr(), testUser, testPass))
	s.Close()
	if next3 := netip.AddrPortFrom(rtp3.Addr(), rtp3.Port()+1); portTaken(next3) {
		t.Errorf("reservation still holds %v after Close", next3)
	}
}
