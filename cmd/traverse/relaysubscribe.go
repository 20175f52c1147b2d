package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/traverse-rtc/traverse/client/relayclient"
)

func init() {
	register(command{name: "relay-subscribe", summary: "receive a room's tracks through an SFU node's relay port, as a relay client, and print per-track packet counts (docs/relay-protocol.md)", run: runRelaySubscribe})
}

// runRelaySubscribe is "traverse relay-subscribe": a relay client
// (client/relayclient) that receives its token's room for a bounded time
// and prints what each track brought.
func runRelaySubscribe(ctx context.Context, args []string) error {
	return relaySubscribe(ctx, os.Stdout, args)
}

func relaySubscribe(ctx context.Context, w io.Writer, args []string) error {
	fs := newFlagSet("relay-subscribe", "relay-subscribe --relay HOST:PORT --credentials FILE [--duration 10s] [--layer all|none|0|1|2]")
	var (
		server   = fs.String("relay", "", "the SFU node's relay port `host:port` (its --cascade-listen)")
		credFile = fs.String("credentials", "", "`file` holding the token (with the subscribe right) and, on the next line, the relay secret in hex (traverse token --relay)")
		duration = fs.Duration("duration", 10*time.Second, "how long to receive (at most 1h)")
		layerArg = fs.String("layer", "all", "`layer` of each video track to receive: all (every simulcast layer, each as published), none, or 0 (lowest) to 2 (a track with fewer layers gets its highest)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	case *duration <= 0 || *duration > time.Hour:
		return errors.New("--duration must be positive and at most 1h")
	}
	layer, err := parseLayer(*layerArg)
	if err != nil {
		return err
	}
	addr, tok, secret, room, err := relayClientArgs(*server, *credFile)
	if err != nil {
		return err
	}
	type count struct {
		track          relayclient.RecvTrack
		packets, bytes uint64
		layers         [3]uint64 // packets by layer
	}
	var mu sync.Mutex
	counts := map[uint8]*count{}
	var order []uint8
	cfg := relayclient.Config{Server: addr, Token: tok, Secret: secret, Room: room, Subscribe: true,
		OnTrack: func(t relayclient.RecvTrack) {
			mu.Lock()
			defer mu.Unlock()
			if counts[t.Index] == nil {
				order = append(order, t.Index)
			}
			counts[t.Index] = &count{track: t}
		},
		OnRTP: func(track, layer uint8, rtp []byte) {
			mu.Lock()
			defer mu.Unlock()
			if k := counts[track]; k != nil {
				k.packets++
				k.bytes += uint64(len(rtp))
				if int(layer) < len(k.layers) {
					k.layers[layer]++
				}
			}
		}}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := relayclient.Dial(dctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	// for each video track, once it is announced, its layer choice (the
	// node asks the publisher for a keyframe of the layer) or, receiving
	// every layer, one keyframe request: a receiver that joins mid-stream
	// starts decoding sooner
	asked := map[uint8]bool{}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	timer := time.NewTimer(*duration)
	defer timer.Stop()
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case <-timer.C:
			break wait
		case <-t.C:
			for _, tr := range c.Received() {
				if !tr.Video || asked[tr.Index] {
					continue
				}
				asked[tr.Index] = true
				switch {
				case layer == relayclient.LayerAll:
					_ = c.RequestKeyframe(tr.Index, 0)
				case layer == relayclient.LayerNone:
					_ = c.SetLayer(tr.Index, layer)
				default:
					_ = c.SetLayer(tr.Index, min(layer, max(tr.Layers, 1)-1))
				}
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	fmt.Fprintf(w, "received %d tracks of room %s in %v\n", len(order), room, time.Since(start).Round(time.Millisecond))
	for _, i := range order {
		k := counts[i]
		fmt.Fprintf(w, "track %d %s/%s %s: %d packets, %d bytes, by layer %d/%d/%d\n", i, k.track.Publisher, k.track.ID, k.track.MimeType,
			k.packets, k.bytes, k.layers[0], k.layers[1], k.layers[2])
	}
	return nil
}

// parseLayer reads --layer.
func parseLayer(s string) (uint8, error) {
	switch s {
	case "all":
		return relayclient.LayerAll, nil
	case "none":
		return relayclient.LayerNone, nil
	case "0", "1", "2":
		return s[0] - '0', nil
	}
	return 0, fmt.Errorf("--layer %q: want all, none, 0, 1 or 2", s)
}
