package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/traverse-rtc/traverse/internal/netlab"
)

// TestLabUpListDown builds a lab the way "traverse lab up" does, finds it
// with List and removes it with Down. The STUN server is left out: the test
// binary is not traverse.
func TestLabUpListDown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("traverse lab needs root")
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	// Named like netlab.New's labs, so that a later test run reaps it if
	// this process dies before its Cleanup.
	name := fmt.Sprintf("p%dx%s", os.Getpid(), hex.EncodeToString(b[:]))
	t.Cleanup(func() { _ = netlab.Down(name) })

	var out bytes.Buffer
	if err := labUp(&out, []string{"double", "--name", name, "--no-stun"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tl-" + name + "-cgn", "tl-" + name + "-cdouble", "10.2.0.2"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("lab up output lacks %q:\n%s", want, out.String())
		}
	}
	infos, err := netlab.List()
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]bool{}
	for _, in := range infos {
		if in.Lab == name {
			nodes[in.Node] = true
		}
	}
	for _, n := range []string{"inet", "stun", "cgn", "home", "cdouble"} {
		if !nodes[n] {
			t.Errorf("list lacks node %s: %v", n, nodes)
		}
	}
	if err := labUp(&out, []string{"--name", name, "--no-stun", "eim-eif"}); err == nil {
		t.Error("a second lab of the same name came up")
	}
	if err := netlab.Down(name); err != nil {
		t.Fatal(err)
	}
	infos, err = netlab.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range infos {
		if in.Lab == name {
			t.Errorf("namespace %s left after down", in.Namespace)
		}
	}
}
