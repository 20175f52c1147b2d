package netlab

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/traverse-rtc/traverse/internal/logging/logtest"
)

// MiniupnpdPublic is the outside address StartMiniupnpd gives a NAT unless
// told otherwise. miniupnpd refuses to map ports on the lab's internet
// addresses (203.0.113.0/24 is a documentation block, reserved by RFC
// 6890, and miniupnpd checks its external address against that list), so
// the NAT gets a second address outside every reserved block
// (AddPublicAddr). The lab has no link out: nothing sent to it leaves the
// lab's namespaces.
var MiniupnpdPublic = netip.MustParseAddr("192.0.3.1")

// miniupnpdRules is what Debian's /etc/miniupnpd/nft_init.sh builds with
// its default names (table inet filter; chains miniupnpd,
// prerouting_miniupnpd, postrouting_miniupnpd). The package's scripts
// cannot run as shipped (miniupnpd-nftables 2.3.1 does not install the
// miniupnpd_functions.sh they source), so the same structure is loaded
// with nft. One change: the forward chain's policy is accept, not drop,
// because the NAT's own table already filters inbound: only established
// flows and flows that miniupnpd's rules dnat'ed pass (installRules).
const miniupnpdRules = `table inet filter {
	chain forward {
		type filter hook forward priority 0; policy accept;
		jump miniupnpd
	}
	chain miniupnpd {
	}
	chain prerouting {
		type nat hook prerouting priority -100; policy accept;
		jump prerouting_miniupnpd
	}
	chain postrouting {
		type nat hook postrouting priority 100; policy accept;
		jump postrouting_miniupnpd
	}
	chain prerouting_miniupnpd {
	}
	chain postrouting_miniupnpd {
	}
}
`

// miniupnpdReady is how long StartMiniupnpd waits for the daemon to listen.
const miniupnpdReady = 5 * time.Second

// Miniupnpd is Debian's miniupnpd (package miniupnpd-nftables) running on a
// NAT: a real home-router daemon answering PCP, NAT-PMP and UPnP IGD on
// the NAT's private side.
type Miniupnpd struct {
	cmd    *exec.Cmd
	exited chan error
	dir    string
	log    logtest.Buffer // the daemon's debug log, its first MiB
	once   sync.Once
}

// StartMiniupnpd gives the NAT the outside address ext (MiniupnpdPublic
// when ext is the zero Addr), loads miniupnpd's nftables chains in the
// NAT's namespace and starts miniupnpd there with PCP, NAT-PMP and UPnP
// IGD on br0, ext as its external address, secure mode (a host may map
// ports only to itself) and mappings allowed for the NAT's LAN on ports
// 1024-65535. It returns once the daemon listens. The mappings it grants
// reach hosts behind the NAT whatever the NAT's kind filters. Closing the
// lab kills it; Close kills it sooner.
func (n *NAT) StartMiniupnpd(ext netip.Addr) (*Miniupnpd, error) {
	if !ext.IsValid() {
		ext = MiniupnpdPublic
	}
	if _, err := exec.LookPath("miniupnpd"); err != nil {
		return nil, fmt.Errorf("netlab: miniupnpd is not installed (Debian package miniupnpd-nftables): %w", err)
	}
	if err := n.AddPublicAddr(ext); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "netlab-miniupnpd-")
	if err != nil {
		return nil, err
	}
	m := &Miniupnpd{dir: dir, exited: make(chan error, 1), log: logtest.Buffer{Max: 1 << 20}}
	rules := filepath.Join(dir, "rules.nft")
	if err := os.WriteFile(rules, []byte(miniupnpdRules), 0o600); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if out, err := n.Command("nft", "-f", rules).CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("netlab: nft -f in %s: %w: %s", n.name, err, out)
	}
	conf := filepath.Join(dir, "miniupnpd.conf")
	err = os.WriteFile(conf, fmt.Appendf(nil, `ext_ifname=eth0
ext_ip=%v
listening_ip=br0
port=0
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=yes
notify_interval=60
uuid=3e7a6a3c-2f41-4c1b-9d7e-5a0b6c2f9e11
allow 1024-65535 %v 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
`, ext, n.LAN()), 0o600)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	m.cmd = n.Command("miniupnpd", "-f", conf, "-d", "-P", filepath.Join(dir, "miniupnpd.pid"))
	m.cmd.Stdout, m.cmd.Stderr = &m.log, &m.log
	if err := m.cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("netlab: start miniupnpd: %w", err)
	}
	go func() { m.exited <- m.cmd.Wait() }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(miniupnpdReady)
	for {
		s := m.log.String()
		if strings.Contains(s, "Listening for NAT-PMP/PCP traffic") && strings.Contains(s, "HTTP listening") {
			return m, nil
		}
		select {
		case err := <-m.exited:
			m.exited <- err
			_ = m.Close()
			return nil, fmt.Errorf("netlab: miniupnpd exited: %v\n%s", err, s)
		case <-deadline:
			_ = m.Close()
			return nil, fmt.Errorf("netlab: miniupnpd not listening after %v:\n%s", miniupnpdReady, s)
		case <-tick.C:
		}
	}
}

// Log is what the daemon printed (it runs with -d: debug, to stderr).
func (m *Miniupnpd) Log() string { return m.log.String() }

// Close kills the daemon and waits for it. It is idempotent.
func (m *Miniupnpd) Close() error {
	m.once.Do(func() {
		_ = m.cmd.Process.Kill()
		<-m.exited
		_ = os.RemoveAll(m.dir)
	})
	return nil
}
