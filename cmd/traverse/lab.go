package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/pion/stun/v3"

	"github.com/traverse-rtc/traverse/internal/netlab"
)

const labUsage = `Usage: traverse lab COMMAND

Builds, lists and tears down NAT labs: network namespaces joined by veth
links, with NATs made of nftables rules (see docs/netlab.md). Needs root.

Commands:
  up [--name NAME] [--no-stun] [--hairpin] [--mapping-timeout D] TOPOLOGY
                                          build a lab and leave it running
  list                                    list the labs on this machine
  down NAME                               stop a lab's processes, delete its namespaces
  clean                                   tear down every lab (leftovers of crashed tests too)
  failover [--kills N] [--limit D]        the failover lab (docs/failover.md): bus, two SFU nodes and
                                          signal as processes, two participants; kill -9 the call's
                                          node N times (default 10), print p50/p95 time to media again
  matrix [--kinds K,K] [--runs N]         client/p2p across every pair of NAT kinds: path, time to media, success
  upgrade [--kinds A,B] [--runs N]        TURN to direct once a blocked direct path opens: time, loss, order

Topologies:
  all      a client behind each NAT kind, plus two levels of NAT
  double   a client behind an eim-eif home NAT behind an eim-adf carrier NAT
  KIND     a client behind one NAT of that kind: ` + "routed, eim-eif, eim-adf, eim-apdf,\n           adm-apdf, symmetric-seq, symmetric-random, block-udp" + `

Every topology has a host "stun" with two addresses on the lab's internet
running "traverse stun" as an RFC 5780 server on 203.0.113.2:3478 (unless
--no-stun). Enter a namespace with "ip netns exec NAMESPACE COMMAND".
`

func runLab(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, labUsage)
		if len(args) == 0 {
			return &exitError{code: 2, err: errors.New("missing command")}
		}
		return nil
	}
	switch args[0] {
	case "up":
		return labUp(os.Stdout, args[1:])
	case "list":
		return labList(os.Stdout)
	case "matrix", "upgrade", "p2p-servers":
		return labP2P(ctx, os.Stdout, args[0], args[1:])
	case "down":
		if len(args) != 2 {
			return &exitError{code: 2, err: errors.New("usage: traverse lab down NAME")}
		}
		if err := netlab.Down(args[1]); err != nil {
			return err
		}
		fmt.Printf("lab %s is down\n", args[1])
		return nil
	case "failover":
		return labFailover(ctx, os.Stdout, args[1:])
	case "clean":
		removed, err := netlab.Clean()
		for _, n := range removed {
			fmt.Printf("removed %s\n", n)
		}
		if len(removed) == 0 && err == nil {
			fmt.Println("no lab namespaces")
		}
		return err
	}
	fmt.Fprint(os.Stderr, labUsage)
	return &exitError{code: 2, err: fmt.Errorf("unknown lab command %q", args[0])}
}

func labUp(w io.Writer, args []string) error {
	fs := newFlagSet("lab up", "lab up [--name NAME] [--no-stun] [--hairpin] [--mapping-timeout D] TOPOLOGY")
	name := fs.String("name", "demo", "lab `name`: its namespaces are tl-NAME-NODE")
	noSTUN := fs.Bool("no-stun", false, "do not start the RFC 5780 STUN server")
	hairpin := fs.Bool("hairpin", false, "make the NATs hairpin")
	timeout := fs.Duration("mapping-timeout", 0, "idle UDP mapping lifetime of the NATs (0: conntrack's 30s/120s)")
	var pos []string
	for { // flags may follow the topology
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	if len(pos) != 1 {
		fs.Usage()
		return &exitError{code: 2, err: errors.New("want exactly one TOPOLOGY")}
	}
	topo, err := netlab.ParseTopology(pos[0])
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	var opts []netlab.NATOption
	if *hairpin {
		opts = append(opts, netlab.Hairpin())
	}
	if *timeout > 0 {
		opts = append(opts, netlab.MappingTimeout(*timeout))
	}
	lab, err := netlab.Open(*name)
	if err != nil {
		return err
	}
	built, err := topo.Build(lab, opts...)
	if err != nil {
		_ = lab.Close()
		return err
	}
	stunHost := built.STUN
	server := netip.AddrPortFrom(stunHost.Addrs()[0], 3478)
	stunNote := ""
	if !*noSTUN {
		pid, logFile, err := startLabSTUN(stunHost, server, stunHost.Addrs()[1])
		if err != nil {
			_ = lab.Close()
			return err
		}
		stunNote = fmt.Sprintf("traverse stun (pid %d, log %s): RFC 5780 on %s, other address %s", pid, logFile, server, stunHost.Addrs()[1])
	}

	fmt.Fprintf(w, "lab %s is up; \"traverse lab down %s\" removes it.\n\n", lab.Name(), lab.Name())
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNAMESPACE\tROLE\tADDRESSES")
	byName := map[string]*netlab.Node{}
	for _, n := range lab.Nodes() {
		byName[n.Name()] = n
	}
	for _, r := range built.Roles {
		n := byName[r.Node]
		addrs := joinAddrs(n.Addrs())
		if r.Node == "inet" {
			addrs = lab.Internet().Prefix().String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Node, n.Namespace(), r.Role, addrs)
	}
	_ = tw.Flush()
	if stunNote != "" {
		fmt.Fprintf(w, "\n%s\n", stunNote)
		fmt.Fprintf(w, "\nTry:\n  ip netns exec %s %s natcheck %s\n", built.Client, exeName(), server)
	}
	return nil
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func exeName() string {
	if exe, err := os.Executable(); err == nil && !strings.Contains(exe, "go-build") {
		return exe
	}
	return "traverse"
}

// startLabSTUN starts this binary's STUN server in h's namespace, detached
// from this process (it outlives "lab up"; "lab down" stops it), and waits
// until it answers.
func startLabSTUN(h *netlab.Host, listen netip.AddrPort, other netip.Addr) (int, string, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, "", err
	}
	logFile := filepath.Join(os.TempDir(), "traverse-"+h.Namespace()+".log")
	f, err := os.Create(logFile)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	cmd := h.Command(exe, "stun", "--listen", listen.String(), "--other-address", other.String(), "--readers", "1")
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, "", fmt.Errorf("start traverse stun in %s: %w", h.Namespace(), err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := h.Do(func() error { return stunPing(listen) })
		if err == nil {
			return pid, logFile, nil
		}
		if time.Now().After(deadline) {
			return 0, "", fmt.Errorf("traverse stun in %s does not answer (see %s): %w", h.Namespace(), logFile, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stunPing sends one Binding request and waits 100 ms for the answer.
func stunPing(server netip.AddrPort) error {
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return err
	}
	defer c.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	if _, err := c.WriteToUDPAddrPort(req.Raw, server); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	buf := make([]byte, 1500)
	n, _, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return err
	}
	res := &stun.Message{Raw: buf[:n]}
	if err := res.Decode(); err != nil {
		return err
	}
	if res.TransactionID != req.TransactionID {
		return errors.New("unexpected answer")
	}
	return nil
}

func labList(w io.Writer) error {
	infos, err := netlab.List()
	if err != nil {
		return err
	}
	if len(infos) == 0 {
		fmt.Fprintln(w, "no labs")
		return nil
	}
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "LAB\tNODE\tNAMESPACE\tADDRESSES\tPROCESSES")
	for _, in := range infos {
		ifs := make([]string, 0, len(in.Addrs))
		for name := range in.Addrs {
			ifs = append(ifs, name)
		}
		sort.Strings(ifs)
		var parts []string
		for _, name := range ifs {
			var ps []string
			for _, p := range in.Addrs[name] {
				ps = append(ps, p.String())
			}
			parts = append(parts, name+" "+strings.Join(ps, ","))
		}
		procs := "-"
		if len(in.Pids) > 0 {
			procs = strings.Trim(fmt.Sprint(in.Pids), "[]")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", in.Lab, in.Node, in.Namespace, strings.Join(parts, "; "), procs)
	}
	return tw.Flush()
}

func init() {
	register(command{name: "lab", summary: "build, list and tear down NAT labs (network namespaces; root)", run: runLab})
}
