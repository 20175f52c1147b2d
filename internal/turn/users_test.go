package turn

import (
	"errors"
	"github.com/traverse-rtc/traverse/internal/testkit"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseUsers(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     map[string]string
		err      string
	}{
		{name: "lines", in: "alice:a\n  bob:b:c  \n\n# carol:x\n", want: map[string]string{"alice": "a", "bob": "b:c"}},
		{name: "later wins", in: "alice:1\nalice:2\n", want: map[string]string{"alice": "2"}},
		{name: "empty password", in: "alice:\n", want: map[string]string{"alice": ""}},
		{name: "no colon", in: "alice:a\nbob\n", err: "f:2: turn: bad users: want NAME:PASSWORD"},
		{name: "no name", in: ":pw\n", err: "f:1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseUsers(strings.NewReader(tc.in), "f")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrUsers) {
					t.Fatalf("err %v, want one containing %q wrapping ErrUsers", err, tc.err)
				}
				return
			}
			if err != nil || len(got) != len(tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestLoadUsersMergesFileOverStatic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte("bob:file\ncarol:c\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	static := map[string]string{"alice": "a", "bob": "flag"}
	got, err := LoadUsers(static, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got["alice"] != "a" || got["bob"] != "file" || got["carol"] != "c" {
		t.Fatalf("got %v", got)
	}
	if static["bob"] != "flag" || len(static) != 2 {
		t.Fatalf("LoadUsers changed its argument: %v", static)
	}
	if _, err := LoadUsers(nil, filepath.Join(t.TempDir(), "missing")); !errors.Is(err, ErrUsers) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// TestRunReloadsUsers: Run rereads the users file on every value of
// Config.ReloadUsers; a broken file keeps the users in force.
func TestRunReloadsUsers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("bob:one\n")
	reload := make(chan os.Signal, 1)
	s, _ := newTestServer(t, func(c *Config) { c.UsersFile, c.ReloadUsers = path, reload })
	pass := func(user string) string { p, _ := s.password(user); return p }
	if pass("bob") != "one" || pass(testUser) != testPass {
		t.Fatalf("at start: bob %q, %s %q", pass("bob"), testUser, pass(testUser))
	}
	write("bob:two\ncarol:c\n")
	reload <- syscall.SIGHUP
	testkit.WaitFor(t, 5*time.Second, "users reloaded", func() bool { return pass("bob") == "two" && pass("carol") == "c" })
	write("not a credential\n")
	reload <- syscall.SIGHUP
	// The failed reload is done once the channel is drained and one more
	// value has been taken.
	reload <- syscall.SIGHUP
	testkit.WaitFor(t, 5*time.Second, "reload channel drained", func() bool { return len(reload) == 0 })
	if pass("bob") != "two" || pass(testUser) != testPass {
		t.Fatalf("a broken file changed the users: bob %q", pass("bob"))
	}
	// Allocations authenticate against the reloaded set.
	c := pionClient(t, s.Addr(), "carol", "c")
	if _, err := c.Allocate(); err != nil {
		t.Fatalf("allocate as a reloaded user: %v", err)
	}
}

func TestRunOnce(t *testing.T) {
	s, _ := newTestServer(t, nil)
	testkit.WaitFor(t, 5*time.Second, "Run started", func() bool { s.mu.RLock(); defer s.mu.RUnlock(); return s.running })
	if err := s.Run(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Run: %v, want ErrClosed", err)
	}
	s2, err := New(Config{Listen: s.Addr(), Realm: testRealm, Users: map[string]string{testUser: testPass}, NoTCP: true})
	if err == nil {
		s2.Close()
		t.Fatal("New on a bound port succeeded")
	}
	s.Close()
	if err := s.Run(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v, want ErrClosed", err)
	}
}

func FuzzParseUsers(f *testing.F) {
	f.Add("alice:a\n# c\n\nbob:b:c\n")
	f.Add(":x\n")
	f.Add("\x00:\xff\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		users, err := ParseUsers(strings.NewReader(in), "f")
		if err != nil {
			return
		}
		for name := range users {
			if name == "" || strings.ContainsAny(name, ":\n") {
				t.Fatalf("bad name %q from %q", name, in)
			}
		}
	})
}
