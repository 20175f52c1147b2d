// Package signaltest holds what tests of other packages need to act as a
// signal client: a join over the WebSocket protocol (docs/signal.md)
// without media, to see where signal places a client.
package signaltest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/traverse-rtc/traverse/internal/signal"
)

// AudioSDP is a small audio-only SDP, offer and answer alike, with ICE
// username fragment ufrag.
func AudioSDP(ufrag string) string {
	return "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n" +
		"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:" + ufrag + "\r\na=ice-pwd:2fyrG3DtY7Vu8Jd6k6N0Qe9x\r\n" +
		"a=fingerprint:sha-256 E4:4E:2A:DC:9D:2D:30:8D:AD:FC:F1:DB:8B:8A:7A:14:55:C8:23:5A:9D:3C:A9:69:7B:8D:1B:05:A0:66:2B:1E\r\n" +
		"a=setup:actpass\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
}

// Join joins with token through the signal server at base (http://HOST:PORT
// or ws://HOST:PORT) as a client at ip (X-Forwarded-For: the server must
// trust the test's address as a proxy), sends an audio offer with ICE
// username fragment ufrag and waits for the answer. It returns the node
// "joined" named. The connection, and so the participant, stays until the
// test ends. A signal error message is returned as an error with its text.
func Join(t testing.TB, ctx context.Context, base, ip, token, ufrag string) (string, error) {
	t.Helper()
	url := "ws" + strings.TrimPrefix(strings.TrimPrefix(base, "ws"), "http") + "/ws"
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: http.Header{"X-Forwarded-For": {ip}}})
	if err != nil {
		return "", err
	}
	t.Cleanup(func() { ws.CloseNow() })
	send := func(v any) error {
		b, _ := json.Marshal(v)
		return ws.Write(ctx, websocket.MessageText, b)
	}
	read := func(typ string) (signal.ServerMessage, error) {
		for {
			_, b, err := ws.Read(ctx)
			if err != nil {
				return signal.ServerMessage{}, err
			}
			var m signal.ServerMessage
			if err := json.Unmarshal(b, &m); err != nil {
				return m, err
			}
			if m.Type == signal.TypeError {
				return m, errors.New("signal error: " + string(b))
			}
			if m.Type == typ {
				return m, nil
			}
		}
	}
	if err := send(signal.ClientMessage{Type: signal.TypeJoin, Token: token}); err != nil {
		return "", err
	}
	j, err := read(signal.TypeJoined)
	if err != nil {
		return "", err
	}
	if err := send(signal.ClientMessage{Type: signal.TypeOffer, SDP: AudioSDP(ufrag)}); err != nil {
		return "", err
	}
	if _, err := read(signal.TypeAnswer); err != nil {
		return "", err
	}
	return j.Node, nil
}
