package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/pion/rtp"

	"github.com/traverse-rtc/traverse/client/relayclient"
)

func init() {
	register(command{name: "relay-publish", summary: "publish synthetic VP8 into a room through an SFU node's relay port, as a relay client (docs/relay-protocol.md)", run: runRelayPublish})
}

// runRelayPublish is "traverse relay-publish": a relay client
// (client/relayclient) publishing one synthetic VP8 track, bounded in
// packets and time.
func runRelayPublish(ctx context.Context, args []string) error {
	fs := newFlagSet("relay-publish", "relay-publish --relay HOST:PORT --credentials FILE [--pps 1000] [--size 1000] [--duration 10s]")
	var (
		server   = fs.String("relay", "", "the SFU node's relay port `host:port` (its --cascade-listen)")
		credFile = fs.String("credentials", "", "`file` holding the token and, on the next line, the relay secret in hex (traverse token --relay)")
		pps      = fs.Int("pps", 1000, "video packets per second (1..100000)")
		size     = fs.Int("size", 1000, "RTP packet size in bytes (100..1400)")
		duration = fs.Duration("duration", 10*time.Second, "how long to publish (at most 1h)")
		trackID  = fs.String("track", "cam", "the track's `id` in the room")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	case *pps < 1 || *pps > 100_000:
		return errors.New("--pps must be 1..100000")
	case *size < 100 || *size > 1400:
		return errors.New("--size must be 100..1400")
	case *duration <= 0 || *duration > time.Hour:
		return errors.New("--duration must be positive and at most 1h")
	}
	addr, tok, secret, room, err := relayClientArgs(*server, *credFile)
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := relayclient.Dial(dctx, relayclient.Config{Server: addr, Token: tok, Secret: secret, Room: room,
		Tracks: []relayclient.Track{{ID: *trackID, Video: true, MimeType: "video/VP8", ClockRate: 90000}}})
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	payload := make([]byte, *size-12)
	pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SSRC: 0x7261_7931, Marker: true}, Payload: payload}
	buf := make([]byte, 0, 1500)
	start := time.Now()
	sent := 0
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for time.Since(start) < *duration {
		due := int(time.Since(start).Seconds() * float64(*pps))
		for ; sent < due; sent++ {
			// VP8 payload descriptor: start of partition 0; a keyframe
			// every 100 packets (bit 0 of the next byte clear)
			payload[0], payload[1] = 0x10, 0x01
			if sent%100 == 0 {
				payload[1] = 0x00
			}
			pkt.SequenceNumber, pkt.Timestamp = uint16(sent), uint32(sent)*90
			b, err := pkt.Header.MarshalTo(buf[:cap(buf)])
			if err != nil {
				return err
			}
			if err := c.WriteRTP(0, 0, append(buf[:b], payload...)); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	fmt.Printf("published %d packets of %d bytes in %v to room %s\n", sent, *size, time.Since(start).Round(time.Millisecond), room)
	return nil
}

// relayClientArgs reads a relay client command's --relay and
// --credentials: the node's address, the token, the secret and the
// token's room (unverified here; the node checks it).
func relayClientArgs(server, credFile string) (addr netip.AddrPort, tok string, secret []byte, room string, err error) {
	addr, err = netip.ParseAddrPort(server)
	if err != nil {
		return addr, "", nil, "", fmt.Errorf("--relay: %w", err)
	}
	tok, secret, err = readRelayCredentials(credFile)
	if err != nil {
		return addr, "", nil, "", err
	}
	room, err = tokenRoom(tok)
	if err != nil {
		return addr, "", nil, "", fmt.Errorf("--credentials: %w", err)
	}
	return addr, tok, secret, room, nil
}

// readRelayCredentials reads what "traverse token --relay" prints.
func readRelayCredentials(path string) (string, []byte, error) {
	if path == "" {
		return "", nil, errors.New("--credentials is required")
	}
	f, err := os.Open(path)
	if err != nil {
		return "", nil, fmt.Errorf("--credentials: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var lines []string
	for sc.Scan() && len(lines) < 2 {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) != 2 {
		return "", nil, fmt.Errorf("--credentials %s: want the token and the relay secret, one a line", path)
	}
	secret, err := hex.DecodeString(lines[1])
	if err != nil || len(secret) != 32 {
		return "", nil, fmt.Errorf("--credentials %s: the relay secret is not 64 hex digits", path)
	}
	return lines[0], secret, nil
}

// tokenRoom reads the room a token names, without verifying it (the node
// does): the hello must ask for the token's room.
func tokenRoom(tok string) (string, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return "", errors.New("the token is not a JWT")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", fmt.Errorf("the token's claims: %w", err)
	}
	var c struct {
		Room string `json:"room"`
	}
	if err := json.Unmarshal(b, &c); err != nil || c.Room == "" {
		return "", errors.New("the token names no room")
	}
	return c.Room, nil
}
