package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/traverse-rtc/traverse/internal/netlab"
	"github.com/traverse-rtc/traverse/internal/p2plab"
)

// labP2P runs "lab matrix", "lab upgrade" and the hidden "lab p2p-servers"
// (the STUN/TURN helper those two start in the lab's server namespace).
func labP2P(ctx context.Context, w io.Writer, cmd string, args []string) error {
	if cmd == "p2p-servers" {
		ok, err := p2plab.ServeHelper()
		if !ok {
			return fmt.Errorf("lab p2p-servers is started by lab matrix and lab upgrade (%s unset)", p2plab.HelperEnv)
		}
		return err
	}
	fs := newFlagSet("lab "+cmd, "lab "+cmd+" [flags]")
	name := fs.String("name", "", "lab `name` (default: random); torn down at the end")
	kinds := fs.String("kinds", strings.Join(p2plab.Kinds, ","), "comma-separated host `kinds`: "+strings.Join(p2plab.Kinds, ", "))
	runs := fs.Int("runs", 3, "runs per pair")
	interval := fs.Duration("interval", 2*time.Millisecond, "upgrade: datagram interval of the stream")
	hold := fs.Duration("hold", time.Second, "upgrade: stream this long through TURN before opening the direct path (and after the upgrade)")
	quiet := fs.Bool("quiet", false, "print only the table")
	relayNodes := fs.Int("relay-nodes", 0, "run this many relay nodes on the lab internet: pairs that cannot go direct try them before TURN")
	upnp := fs.String("upnp", "", "run miniupnpd on the NATs of these `kinds` (\"all\": every single NAT): a port mapping is one more direct candidate")
	withICE := fs.Bool("ice", false, "matrix: also run pion/ice (pion/webrtc's ICE agent) on the same pairs and servers, and compare")
	if cmd == "matrix" {
		fs.Usage = func() {
			fmt.Fprint(fs.Output(), "Usage: traverse lab matrix [--kinds K,K] [--runs N] [--relay-nodes N] [--upnp all|K,K] [--name NAME]\n\nConnects client/p2p peers behind every ordered pair of host kinds, --runs\ntimes each, and prints the path chosen (\"mapped n/m\": runs direct to a port\nmapping), the path RFC 4787 theory expects with the extras (marked ! when a run\ndiffers), the time to the first media packet (median, p95) and the success\nrate. Needs root; --upnp needs miniupnpd (Debian miniupnpd-nftables).\n\nFlags:\n")
			fs.PrintDefaults()
		}
	} else {
		fs.Usage = func() {
			fmt.Fprint(fs.Output(), "Usage: traverse lab upgrade [--kinds A,B] [--runs N]\n\nBlocks UDP between a host of kind A and one of kind B (nftables), connects\nthem through TURN (a relay node with --relay-nodes), streams datagrams, opens\nthe direct path and reports the\ntime the flow takes to move onto it and the datagrams lost or reordered.\nDefault kinds: eim-apdf,eim-apdf. Needs root.\n\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &exitError{code: 2, err: err}
	}
	ks := strings.Split(*kinds, ",")
	if cmd == "upgrade" && !isFlagSet(fs, "kinds") {
		ks = []string{"eim-apdf", "eim-apdf"}
	}
	if *runs <= 0 || (cmd == "upgrade" && len(ks) != 2) {
		return &exitError{code: 2, err: errors.New("--runs must be positive; upgrade takes two --kinds")}
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	lab, err := netlab.Open(*name)
	if err != nil {
		return err
	}
	defer lab.Close()
	uniq := map[string]bool{}
	var build []string
	for _, k := range ks {
		if !uniq[k] {
			uniq[k] = true
			build = append(build, k)
		}
	}
	x := p2plab.Extras{RelayNodes: *relayNodes}
	if *upnp != "" {
		x.Miniupnpd = strings.Split(*upnp, ",")
	}
	env, err := p2plab.BuildWith(lab, build, x)
	if env != nil {
		defer env.Close()
	}
	if err != nil {
		return err
	}
	if err := env.StartServers(exec.Command(exe, "lab", "p2p-servers")); err != nil {
		return err
	}
	if err := env.StartExtras(); err != nil {
		return err
	}
	var log io.Writer = os.Stderr
	if *quiet {
		log = nil
	}
	if cmd == "matrix" {
		start := time.Now()
		res := env.Matrix(ctx, ks, *runs, log)
		if err := p2plab.Table(w, res); err != nil {
			return err
		}
		ok, total, expected := 0, 0, 0
		for _, r := range res {
			ok += r.OK()
			total += len(r.Runs)
			if r.AsExpected() {
				expected++
			}
		}
		fmt.Fprintf(w, "\n%d/%d runs connected; %d/%d pairs on the expected path; %s\n", ok, total, expected, len(res), time.Since(start).Round(time.Second))
		if !*withICE {
			return nil
		}
		var iceLog func(a, b string, i int, r p2plab.Run)
		if log != nil {
			iceLog = func(a, b string, i int, r p2plab.Run) {
				fmt.Fprintf(log, "ice %s -> %s run %d: ok %t %s %s %v\n", a, b, i+1, r.OK, r.Path, r.FirstMedia.Round(time.Millisecond), r.Err)
			}
		}
		iceRes := env.MatrixICE(ctx, ks, *runs, iceLog)
		fmt.Fprintln(w, "\npion/ice on the same pairs:")
		if err := p2plab.Table(w, iceRes); err != nil {
			return err
		}
		fmt.Fprintln(w)
		return p2plab.Compare(w, res, iceRes)
	}
	var ups []time.Duration
	lost, reordered, failed := 0, 0, 0
	for i := range *runs {
		r := env.Upgrade(ctx, ks[0], ks[1], *interval, *hold)
		if log != nil {
			fmt.Fprintf(log, "run %d: upgrade %s sent %d received %d lost %d reordered %d err %v\n", i+1,
				r.Upgrade.Round(time.Millisecond), r.Sent, r.Received, r.Lost, r.Reordered, r.Err)
		}
		if !r.OK {
			failed++
			continue
		}
		ups = append(ups, r.Upgrade)
		lost += r.Lost
		reordered += r.Reordered
	}
	fmt.Fprintf(w, "%s -> %s: %d runs, %d failed; upgrade p50 %s p95 %s max %s; datagrams lost %d, reordered %d\n",
		ks[0], ks[1], *runs, failed, p2plab.Quantile(ups, 0.5).Round(time.Millisecond), p2plab.Quantile(ups, 0.95).Round(time.Millisecond),
		p2plab.Quantile(ups, 1).Round(time.Millisecond), lost, reordered)
	return nil
}

func isFlagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
