package nat_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/client/nat"
	"github.com/traverse-rtc/traverse/internal/testkit"
)

// The client also works against an RFC 5780 server nobody here wrote:
// coturn's turnserver listening on 127.0.0.1 and 127.0.0.2.
func TestDiscoverAgainstCoturn(t *testing.T) {
	bin, err := exec.LookPath("turnserver")
	if err != nil {
		t.Skipf("turnserver not installed (Debian package coturn): %v", err)
	}
	port := testkit.FreePorts(t, 2, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"))
	dir := t.TempDir()
	conf := filepath.Join(dir, "turnserver.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`listening-ip=127.0.0.1
listening-ip=127.0.0.2
listening-port=%d
stun-only
fingerprint
no-tls
no-dtls
no-cli
pidfile=%s/turnserver.pid
log-file=%s/turnserver.log
simple-log
`, port, dir, dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })

	server := "127.0.0.1:" + strconv.Itoa(port)
	var rep nat.Report
	testkit.Eventually(10*time.Second, func() bool { // until coturn has started
		rep, err = nat.Discover(context.Background(), nat.Config{Server: server, RTO: 50 * time.Millisecond, Attempts: 3})
		return err == nil
	})
	if err != nil {
		t.Fatalf("against coturn: %v", err)
	}
	t.Logf("against coturn:\n%s", rep)
	if rep.NAT || rep.Mapping != nat.EndpointIndependent || rep.Filtering != nat.EndpointIndependent || !rep.Hairpinning {
		t.Errorf("got %+v, want no NAT, endpoint-independent mapping and filtering, hairpinning", rep)
	}
	if rep.OtherAddress.String() != "127.0.0.2:"+strconv.Itoa(port+1) {
		t.Errorf("coturn's other address %s", rep.OtherAddress)
	}
}
