package stun_test

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/traverse-rtc/traverse/internal/stun/stuntest"
)

// coturn runs one of coturn's client tools with a deadline and returns its
// output; it skips the test when the tool is not installed.
func coturn(t *testing.T, tool string, args ...string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		t.Skipf("%s not installed (Debian package coturn): %v", tool, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", tool, args, err, out)
	}
	return string(out)
}

// coturn's turnutils_stunclient gets correct answers, the RFC 5780 ones
// (OTHER-ADDRESS, RESPONSE-ORIGIN after CHANGE-REQUEST) included.
func TestInteropCoturnStunclient(t *testing.T) {
	s := stuntest.RFC5780(t)
	p := strconv.Itoa(int(s.Addr().Port()))
	out := coturn(t, "turnutils_stunclient", "-f", "-L", "127.0.0.1", "-p", p, "127.0.0.1")
	other := s.OtherAddr().String()
	for _, want := range []string{
		"RFC 5780 response 1",
		"Response origin: : " + s.Addr().String(),
		"Other addr: : " + other,
		"UDP reflexive addr: 127.0.0.1:",
		// Response 2 answered a change of IP and port: it comes from
		// the other address.
		"RFC 5780 response 2",
		"Response origin: : " + other,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("turnutils_stunclient output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "rror") {
		t.Errorf("turnutils_stunclient reports an error:\n%s", out)
	}
}

// coturn's NAT discovery tool, run against our RFC 5780 server on
// loopback, finds what is true there: no NAT, so endpoint-independent
// mapping and filtering and working hairpinning, also with PADDING.
func TestInteropCoturnNatdiscovery(t *testing.T) {
	s := stuntest.RFC5780(t)
	p := strconv.Itoa(int(s.Addr().Port()))
	for _, padding := range []bool{false, true} {
		t.Run(fmt.Sprintf("padding=%v", padding), func(t *testing.T) {
			args := []string{"-m", "-f", "-H", "-p", p, "127.0.0.1"}
			if padding {
				args = append([]string{"-P"}, args...)
			}
			out := coturn(t, "turnutils_natdiscovery", args...)
			for _, want := range []string{
				"NAT with Endpoint Independent Mapping!",
				"NAT with Endpoint Independent Filtering!",
				"Received a request (maybe a successful hairpinning)",
				"Other addr: : " + s.OtherAddr().String(),
			} {
				if !strings.Contains(out, want) {
					t.Errorf("turnutils_natdiscovery output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}
