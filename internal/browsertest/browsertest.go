// Package browsertest drives a real Chromium from Go tests over the Chrome
// DevTools Protocol (CDP): launch a headless browser with a fake camera and
// microphone and its own profile, open pages, evaluate JavaScript (awaiting
// promises), and kill it. It speaks CDP's JSON over a WebSocket
// (github.com/coder/websocket); nothing else is needed.
//
// Each Browser gets a fresh --user-data-dir and background networking off,
// so it talks to nothing but the pages the test opens (see PEERS.md).
package browsertest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// DefaultPath is Debian's chromium.
const DefaultPath = "/usr/bin/chromium"

// ErrNoBrowser is returned by Launch when the browser binary is missing.
var ErrNoBrowser = errors.New("browsertest: chromium not found")

// Options configure Launch.
type Options struct {
	// Path is the browser binary; default DefaultPath.
	Path string
	// Flags are added to the default flags.
	Flags []string
	// Wrap, when set, prefixes the command (e.g. "ip netns exec NS").
	Wrap []string
	// HTTPClient, when set, dials the DevTools WebSocket (on the browser's
	// loopback): with Wrap entering a network namespace, a client whose
	// dialer opens its sockets in that namespace (netlab.Node.Dial).
	HTTPClient *http.Client
	// Log receives the browser's stderr lines and console messages; nil
	// discards them.
	Log func(string)
	// DenyMedia makes the browser refuse every page camera and microphone
	// access (as a user who clicks "Block"): getUserMedia rejects with
	// NotAllowedError.
	DenyMedia bool
	// NoDevices leaves out the fake camera and microphone: a machine
	// without any (getUserMedia rejects with NotFoundError).
	NoDevices bool
}

// DefaultFlags are the flags every browser gets: headless, fake media
// devices granted without a prompt, loopback ICE candidates allowed, no
// traffic of its own.
var DefaultFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--disable-default-apps", "--disable-extensions", "--metrics-recording-only", "--mute-audio",
	"--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
	"--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
	"--disable-features=MediaRouter,OptimizationHints,Translate,WebRtcHideLocalIpsWithMdns",
	"--remote-debugging-port=0", "--remote-allow-origins=*",
}

// Browser is one running browser.
type Browser struct {
	cmd  *exec.Cmd
	dir  string
	conn *websocket.Conn
	log  func(string)

	ctx    context.Context // canceled by Close; ends the reader
	cancel context.CancelFunc
	wg     sync.WaitGroup // reader and stderr pump

	mu      sync.Mutex // guards nextID, pending, err
	nextID  int64
	pending map[int64]chan response
	err     error

	closeOnce sync.Once
}

type response struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

type message struct {
	ID        int64           `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	response
}

// Launch starts a browser and connects to its DevTools endpoint.
func Launch(ctx context.Context, o Options) (*Browser, error) {
	path := o.Path
	if path == "" {
		path = DefaultPath
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoBrowser, err)
	}
	dir, err := os.MkdirTemp("", "browsertest-")
	if err != nil {
		return nil, err
	}
	args := append(append([]string{}, o.Wrap...), path)
	for _, f := range DefaultFlags {
		if o.DenyMedia && f == "--use-fake-ui-for-media-stream" {
			f += "=deny"
		}
		if o.NoDevices && f == "--use-fake-device-for-media-stream" {
			continue
		}
		args = append(args, f)
	}
	args = append(args, o.Flags...)
	args = append(args, "--user-data-dir="+dir, "about:blank")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	logf := o.Log
	if logf == nil {
		logf = func(string) {}
	}
	bctx, cancel := context.WithCancel(context.Background())
	b := &Browser{cmd: cmd, dir: dir, log: logf, ctx: bctx, cancel: cancel, pending: map[int64]chan response{}}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			logf("chromium: " + sc.Text())
		}
	}()
	ws, err := b.devtoolsURL(ctx)
	if err == nil {
		b.conn, _, err = websocket.Dial(ctx, ws, &websocket.DialOptions{HTTPClient: o.HTTPClient})
	}
	if err != nil {
		b.kill()
		return nil, fmt.Errorf("browsertest: devtools: %w", err)
	}
	b.conn.SetReadLimit(64 << 20)
	b.wg.Add(1)
	go func() { defer b.wg.Done(); b.readLoop() }()
	return b, nil
}

// devtoolsURL waits for the DevToolsActivePort file: the port on the first
// line, the browser target's path on the second.
func (b *Browser) devtoolsURL(ctx context.Context) (string, error) {
	f := filepath.Join(b.dir, "DevToolsActivePort")
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if data, err := os.ReadFile(f); err == nil {
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			if len(lines) == 2 {
				return "ws://127.0.0.1:" + strings.TrimSpace(lines[0]) + strings.TrimSpace(lines[1]), nil
			}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-tick.C:
		}
	}
}

func (b *Browser) readLoop() {
	for {
		_, data, err := b.conn.Read(b.ctx)
		if err != nil {
			b.fail(err)
			return
		}
		var m message
		if json.Unmarshal(data, &m) != nil {
			continue
		}
		if m.ID != 0 {
			b.mu.Lock()
			ch := b.pending[m.ID]
			delete(b.pending, m.ID)
			b.mu.Unlock()
			if ch != nil {
				ch <- m.response
			}
			continue
		}
		b.event(m)
	}
}

// event logs console messages and exceptions of the pages.
func (b *Browser) event(m message) {
	switch m.Method {
	case "Runtime.consoleAPICalled":
		var p struct {
			Type string `json:"type"`
			Args []struct {
				Value       any    `json:"value"`
				Description string `json:"description"`
			} `json:"args"`
		}
		if json.Unmarshal(m.Params, &p) == nil {
			var parts []string
			for _, a := range p.Args {
				if a.Value != nil {
					parts = append(parts, fmt.Sprint(a.Value))
				} else {
					parts = append(parts, a.Description)
				}
			}
			b.log("console." + p.Type + ": " + strings.Join(parts, " "))
		}
	case "Runtime.exceptionThrown":
		b.log("exception: " + string(m.Params))
	}
}

func (b *Browser) fail(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
	for id, ch := range b.pending {
		close(ch)
		delete(b.pending, id)
	}
}

// Call sends a CDP command (to a page's session when sessionID is set) and
// decodes its result into out (if not nil).
func (b *Browser) Call(ctx context.Context, sessionID, method string, params, out any) error {
	b.mu.Lock()
	if b.err != nil {
		err := b.err
		b.mu.Unlock()
		return fmt.Errorf("browsertest: connection lost: %w", err)
	}
	b.nextID++
	id := b.nextID
	ch := make(chan response, 1)
	b.pending[id] = ch
	b.mu.Unlock()
	p, err := json.Marshal(params)
	if err != nil {
		return err
	}
	if params == nil {
		p = []byte("{}")
	}
	req, _ := json.Marshal(struct {
		ID        int64           `json:"id"`
		Method    string          `json:"method"`
		SessionID string          `json:"sessionId,omitempty"`
		Params    json.RawMessage `json:"params"`
	}{id, method, sessionID, p})
	if err := b.conn.Write(ctx, websocket.MessageText, req); err != nil {
		return err
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return errors.New("browsertest: connection lost")
		}
		if r.Error != nil {
			return fmt.Errorf("browsertest: %s: %s (%d)", method, r.Error.Message, r.Error.Code)
		}
		if out != nil {
			return json.Unmarshal(r.Result, out)
		}
		return nil
	case <-ctx.Done():
		b.mu.Lock()
		delete(b.pending, id)
		b.mu.Unlock()
		return fmt.Errorf("browsertest: %s: %w", method, ctx.Err())
	}
}

// Page is one tab.
type Page struct {
	b       *Browser
	target  string
	session string
}

// NewPage opens a tab at url and waits for its document to load.
func (b *Browser) NewPage(ctx context.Context, url string) (*Page, error) {
	var t struct {
		TargetID string `json:"targetId"`
	}
	if err := b.Call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &t); err != nil {
		return nil, err
	}
	var s struct {
		SessionID string `json:"sessionId"`
	}
	if err := b.Call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": t.TargetID, "flatten": true}, &s); err != nil {
		return nil, err
	}
	p := &Page{b: b, target: t.TargetID, session: s.SessionID}
	if err := b.Call(ctx, p.session, "Runtime.enable", nil, nil); err != nil {
		return nil, err
	}
	if err := b.Call(ctx, p.session, "Page.enable", nil, nil); err != nil {
		return nil, err
	}
	return p, p.Navigate(ctx, url)
}

// Navigate loads url and waits until document.readyState is "complete".
func (p *Page) Navigate(ctx context.Context, url string) error {
	var r struct {
		ErrorText string `json:"errorText"`
	}
	if err := p.b.Call(ctx, p.session, "Page.navigate", map[string]any{"url": url}, &r); err != nil {
		return err
	}
	if r.ErrorText != "" {
		return fmt.Errorf("browsertest: navigate %s: %s", url, r.ErrorText)
	}
	return p.WaitFor(ctx, `document.readyState === "complete" && location.href !== "about:blank"`, 50*time.Millisecond)
}

// Eval evaluates expr in the page, awaiting it if it is a promise, and
// decodes its JSON value into out (if not nil). A thrown exception is an
// error.
func (p *Page) Eval(ctx context.Context, expr string, out any) error {
	var r struct {
		Result struct {
			Type  string          `json:"type"`
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception *struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := p.b.Call(ctx, p.session, "Runtime.evaluate", map[string]any{
		"expression": expr, "awaitPromise": true, "returnByValue": true,
	}, &r); err != nil {
		return err
	}
	if e := r.ExceptionDetails; e != nil {
		msg := e.Text
		if e.Exception != nil {
			msg = e.Exception.Description
		}
		return fmt.Errorf("browsertest: evaluate: %s", msg)
	}
	if out != nil && len(r.Result.Value) > 0 {
		return json.Unmarshal(r.Result.Value, out)
	}
	return nil
}

// WaitFor polls the expression cond (a value or a promise) every interval
// until it is truthy or ctx ends.
func (p *Page) WaitFor(ctx context.Context, cond string, interval time.Duration) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var lastErr error
	for {
		var ok bool
		if err := p.Eval(ctx, "Promise.resolve("+cond+").then((v) => !!v)", &ok); err != nil {
			lastErr = err
		} else if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("browsertest: waiting for %s: %w (last error: %v)", cond, ctx.Err(), lastErr)
		case <-tick.C:
		}
	}
}

// Close asks the browser to exit, kills its process group if it does not
// within 3 s, and removes its profile. It is idempotent.
func (b *Browser) Close() error {
	b.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = b.Call(ctx, "", "Browser.close", nil, nil)
		cancel()
		done := make(chan struct{})
		go func() { _ = b.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		// Helpers (renderer, zygote) share the browser's process group:
		// make sure none outlives it.
		_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		b.cancel()
		if b.conn != nil {
			_ = b.conn.CloseNow()
		}
		b.wg.Wait()
		_ = os.RemoveAll(b.dir)
	})
	return nil
}

// kill ends a browser that never finished launching.
func (b *Browser) kill() {
	_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
	_ = b.cmd.Wait()
	b.cancel()
	b.wg.Wait()
	_ = os.RemoveAll(b.dir)
}

// PID returns the browser's process id.
func (b *Browser) PID() int { return b.cmd.Process.Pid }

// Call sends a CDP command to the page (Page.captureScreenshot, ...).
func (p *Page) Call(ctx context.Context, method string, params, out any) error {
	return p.b.Call(ctx, p.session, method, params, out)
}
