package main

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/traverse-rtc/traverse/internal/config"
	"gopkg.in/yaml.v3"
)

// yamlArgs turns a configuration file (keys = flag names, log.* nested)
// into the command line that says the same, so the command's own flag set
// parses every key and value.
func yamlArgs(b []byte) ([]string, error) {
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var args []string
	for _, k := range keys {
		switch v := m[k].(type) {
		case map[string]any:
			sub, err := yaml.Marshal(v)
			if err != nil {
				return nil, err
			}
			subArgs, err := yamlArgs(sub)
			if err != nil {
				return nil, err
			}
			for _, a := range subArgs {
				args = append(args, "--"+k+"-"+strings.TrimPrefix(a, "--"))
			}
		case []any:
			for _, e := range v {
				args = append(args, fmt.Sprintf("--%s=%v", k, e))
			}
		default:
			args = append(args, fmt.Sprintf("--%s=%v", k, v))
		}
	}
	return args, nil
}

// TestDeployConfigs parses every configuration under deploy/one-machine and
// deploy/three-regions with the flag set of the command its file name
// starts with (ROLE.yaml or ROLE-NAME.yaml): an unknown key or a value the
// flag refuses fails, so the examples cannot drift from the commands.
func TestDeployConfigs(t *testing.T) {
	files, err := filepath.Glob("../../deploy/*/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		dir := filepath.Base(filepath.Dir(f))
		if dir != "one-machine" && dir != "three-regions" {
			continue
		}
		base := strings.TrimSuffix(filepath.Base(f), ".yaml")
		role, _, _ := strings.Cut(base, "-")
		seen[dir+"/"+role] = true
		t.Run(dir+"/"+base, func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			args, err := yamlArgs(b)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(args) < 3 {
				t.Fatalf("%s: only %d keys", f, len(args))
			}
			cmd, ok := commands[role]
			if !ok {
				t.Fatalf("%s: no command %q", f, role)
			}
			// Every flag parses, then --help stops the command before it
			// starts anything; usage text goes nowhere.
			devnull, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			stderr := os.Stderr
			os.Stderr = devnull
			err = cmd.run(context.Background(), append(args, "--help"))
			os.Stderr = stderr
			devnull.Close()
			if !config.IsHelp(err) {
				t.Fatalf("traverse %s %s: %v", role, strings.Join(args, " "), err)
			}
		})
	}
	for _, want := range []string{"one-machine/bus", "one-machine/signal", "one-machine/sfu", "one-machine/turn",
		"one-machine/controller", "three-regions/bus", "three-regions/signal", "three-regions/sfu",
		"three-regions/controller", "three-regions/stun", "three-regions/turn"} {
		if !seen[want] {
			t.Errorf("no configuration for %s", want)
		}
	}
}

// TestYAMLArgsRefuses: the conversion keeps a bad key or value visible to
// the flag set (so TestDeployConfigs can fail).
func TestYAMLArgsRefuses(t *testing.T) {
	for _, body := range []string{"listen: 127.0.0.1:0\nrealmm: x\n", "max-allocations: lots\n", "log:\n  levle: debug\n"} {
		args, err := yamlArgs([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		devnull, _ := os.Open(os.DevNull)
		stderr := os.Stderr
		os.Stderr = devnull
		err = commands["turn"].run(context.Background(), append(args, "--help"))
		os.Stderr = stderr
		devnull.Close()
		if err == nil || config.IsHelp(err) {
			t.Errorf("%q accepted: %v", body, err)
		}
	}
}

// TestSystemdUnits: every role has a unit under deploy/systemd that
// systemd-analyze verify accepts (with this test binary standing in for
// /usr/local/bin/traverse), that runs a command that exists with
// --config, restarts on failure, raises LimitNOFILE, runs as a dynamic
// user, and keeps capabilities only where an eBPF offload needs them.
func TestSystemdUnits(t *testing.T) {
	units, err := filepath.Glob("../../deploy/systemd/traverse-*.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	withCaps := map[string]bool{"turn": true, "sipgw": true, "distribute": true}
	exec1 := regexp.MustCompile(`(?m)^ExecStart=/usr/local/bin/traverse (\S+) --config /etc/traverse/(\S+)\.yaml`)
	seen := map[string]bool{}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		m := exec1.FindStringSubmatch(s)
		if m == nil || m[1] != m[2] || "traverse-"+m[1]+".service" != filepath.Base(u) {
			t.Errorf("%s: ExecStart does not run its role with --config /etc/traverse/ROLE.yaml", u)
			continue
		}
		role := m[1]
		seen[role] = true
		if _, ok := commands[role]; !ok {
			t.Errorf("%s: no command %q", u, role)
		}
		for _, line := range []string{"Restart=on-failure", "DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict"} {
			if !strings.Contains(s, "\n"+line+"\n") {
				t.Errorf("%s: no %s", u, line)
			}
		}
		if !regexp.MustCompile(`(?m)^LimitNOFILE=\d{5,}$`).MatchString(s) {
			t.Errorf("%s: no LimitNOFILE of 10000 or more", u)
		}
		caps := regexp.MustCompile(`(?m)^CapabilityBoundingSet=(.*)$`).FindStringSubmatch(s)
		if caps == nil || (caps[1] != "") != withCaps[role] {
			t.Errorf("%s: CapabilityBoundingSet %q (capabilities only for the offloading roles)", u, caps)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(u)),
			[]byte(strings.ReplaceAll(s, "/usr/local/bin/traverse", os.Args[0])), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []string{"bus", "signal", "sfu", "controller", "stun", "turn", "sipgw", "distribute"} {
		if !seen[r] {
			t.Errorf("no deploy/systemd/traverse-%s.service", r)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze (Debian package systemd) is needed to check the units")
	}
	copies, _ := filepath.Glob(filepath.Join(dir, "*.service"))
	out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, copies...)...).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestContainerRecipe checks what this machine cannot run (it has no
// container daemon): the Dockerfile's build command, run exactly as written
// (its output path aside), makes a static binary, the final stage is
// distroless/static or scratch and copies that binary; every service of
// deploy/compose.yaml runs a command that exists with flags its flag set
// takes, and names credentials files the bus writes.
func TestContainerRecipe(t *testing.T) {
	b, err := os.ReadFile("../../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	build := regexp.MustCompile(`(?m)^RUN ((?:[A-Z_]+=\S+ )+)go build (.*) -o /out/traverse (\./cmd/traverse)$`).FindStringSubmatch(df)
	if build == nil {
		t.Fatal("Dockerfile: no RUN ... go build ... -o /out/traverse ./cmd/traverse")
	}
	env := strings.Fields(build[1])
	if !strings.Contains(build[1], "CGO_ENABLED=0 ") {
		t.Errorf("Dockerfile build without CGO_ENABLED=0: %q", build[1])
	}
	stages := regexp.MustCompile(`(?m)^FROM (\S+)`).FindAllStringSubmatch(df, -1)
	if final := stages[len(stages)-1][1]; !strings.HasPrefix(final, "gcr.io/distroless/static") && final != "scratch" {
		t.Errorf("final stage %s: want distroless/static or scratch", final)
	}
	if !strings.Contains(df, "\nCOPY --from=build /out/traverse /usr/local/bin/traverse\n") {
		t.Error("Dockerfile does not copy /out/traverse into the image")
	}
	if goVersion := regexp.MustCompile(`(?m)^FROM golang:(\d+\.\d+\.\d+)`).FindStringSubmatch(df); goVersion == nil {
		t.Error("Dockerfile: the build stage is not golang:X.Y.Z")
	} else if mod, _ := os.ReadFile("../../go.mod"); !strings.Contains(string(mod), "\ngo "+goVersion[1]+"\n") {
		t.Errorf("Dockerfile builds with Go %s, go.mod says otherwise", goVersion[1])
	}

	out := filepath.Join(t.TempDir(), "traverse")
	args := append([]string{"build"}, append(splitShellWords(build[2]), "-o", out, build[3])...)
	cmd := exec.Command("go", args...)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), env...)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s go %s: %v\n%s", build[1], strings.Join(args, " "), err, msg)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the image's binary asks for a dynamic loader (not static)")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the image's binary needs shared libraries %v", libs)
	}
	if v, err := exec.Command(out, "version").CombinedOutput(); err != nil && !strings.Contains(string(v), "traverse") {
		t.Errorf("the built binary does not run: %v\n%s", err, v)
	}

	b, err = os.ReadFile("../../deploy/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Build   struct{ Dockerfile string }
			Command []string
			Volumes []string
			User    string
		}
	}
	if err := yaml.Unmarshal(b, &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	if len(compose.Services) < 5 {
		t.Fatalf("compose.yaml: %d services", len(compose.Services))
	}
	creds := map[string]bool{"signal.creds": true, "controller.creds": true}
	for _, s := range compose.Services {
		for i, a := range s.Command {
			if s.Command[0] == "bus" && a == "--node" && i+1 < len(s.Command) {
				creds["sfu-"+s.Command[i+1]+".creds"] = true
			}
		}
	}
	for name, s := range compose.Services {
		if s.Build.Dockerfile != "deploy/Dockerfile" {
			t.Errorf("%s: built from %q, not deploy/Dockerfile", name, s.Build.Dockerfile)
		}
		if s.User != "65532:65532" {
			t.Errorf("%s: user %q, not the image's nonroot 65532:65532", name, s.User)
		}
		for _, v := range s.Volumes {
			_, target, _ := strings.Cut(v, ":")
			if !strings.Contains(df, "\nCOPY --from=build --chown=65532:65532 /out"+target+" "+target+"\n") {
				t.Errorf("%s: volume %s: the image has no %s owned by its user (a new volume would be root's)", name, v, target)
			}
		}
		if len(s.Command) == 0 {
			t.Errorf("%s: no command", name)
			continue
		}
		for i, a := range s.Command {
			if a == "--nats-creds" && (i+1 >= len(s.Command) || !creds[strings.TrimPrefix(s.Command[i+1], "/creds/")]) {
				t.Errorf("%s: --nats-creds %v is no file the bus writes (%v)", name, s.Command[i+1:], creds)
			}
		}
		run, ok := commands[s.Command[0]]
		if !ok {
			t.Errorf("%s: no command %q", name, s.Command[0])
			continue
		}
		devnull, _ := os.Open(os.DevNull)
		stderr := os.Stderr
		os.Stderr = devnull
		err := run.run(context.Background(), append(append([]string(nil), s.Command[1:]...), "--help"))
		os.Stderr = stderr
		devnull.Close()
		if !config.IsHelp(err) {
			t.Errorf("%s: traverse %s: %v", name, strings.Join(s.Command, " "), err)
		}
	}
}

// splitShellWords splits the flags of a Dockerfile RUN line: words apart
// by spaces, a double-quoted part kept whole (without its quotes).
func splitShellWords(s string) []string {
	var words []string
	var cur strings.Builder
	quoted, any := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, any = !quoted, true
		case r == ' ' && !quoted:
			if any {
				words = append(words, cur.String())
			}
			cur.Reset()
			any = false
		default:
			cur.WriteRune(r)
			any = true
		}
	}
	if any {
		words = append(words, cur.String())
	}
	return words
}

// TestNftablesExample: nft accepts deploy/nftables.conf (checked, not
// loaded), and it opens each role's public media port.
func TestNftablesExample(t *testing.T) {
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Fatal("nft (Debian package nftables) is needed to check deploy/nftables.conf")
	}
	if out, err := exec.Command(nft, "-c", "-f", "../../deploy/nftables.conf").CombinedOutput(); err != nil {
		t.Fatalf("nft -c: %v\n%s", err, out)
	}
	b, err := os.ReadFile("../../deploy/nftables.conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, rule := range []string{"udp dport 7882 accept", "tcp dport 7881 accept", "udp dport 49152-65535 accept",
		"tcp dport 6222 ip saddr @traverse_hosts accept", "tcp dport 4222 ip saddr @traverse_hosts accept"} {
		if !strings.Contains(string(b), rule) {
			t.Errorf("deploy/nftables.conf has no %q", rule)
		}
	}
}
