package procstat

import (
	"errors"
	"os"
	"testing"
)

func TestParseStat(t *testing.T) {
	// A command name with a space and a parenthesis, as proc(5) allows.
	stat := []byte("4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 125 0 0 20 0 3 0 1000 123456789 512 18446744073709551615")
	p, err := parseStat(stat, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if p.User != 2.5 || p.System != 1.25 || p.CPU() != 3.75 || p.RSS != 512*4096 {
		t.Fatalf("%+v", p)
	}
	for _, bad := range []string{"", "4242 no parenthesis 1 2 3", "4242 (x) S 1 2", "4242 (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 u 125 0 0 20 0 3 0 1000 123456789 512"} {
		if _, err := parseStat([]byte(bad), 4096); !errors.Is(err, ErrFormat) {
			t.Errorf("%q: %v, want ErrFormat", bad, err)
		}
	}
}

func TestParseMachine(t *testing.T) {
	m, err := parseMachine([]byte("cpu  100 10 50 1000 20 5 30 7 40 4\ncpu0 1 2 3 4 5 6 7 8 9 10\n"))
	if err != nil {
		t.Fatal(err)
	}
	// busy: user 100 + nice 10 + system 50 + irq 5 + softirq 30 + steal 7.
	if m.Busy != 2.02 || m.SoftIRQ != 0.3 {
		t.Fatalf("%+v", m)
	}
	for _, bad := range []string{"", "intr 1 2 3 4 5 6 7 8", "cpu 1 2 3", "cpu 1 2 3 4 5 6 x 8"} {
		if _, err := parseMachine([]byte(bad)); !errors.Is(err, ErrFormat) {
			t.Errorf("%q: %v, want ErrFormat", bad, err)
		}
	}
}

// TestReadSelf: on Linux this process's own figures read.
func TestReadSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc (not Linux)")
	}
	p, err := Read("self")
	if err != nil || p.RSS == 0 {
		t.Fatalf("%+v %v", p, err)
	}
	if _, err := ReadMachine(); err != nil {
		t.Fatal(err)
	}
	if p := ReadPID(0); p != (Process{}) {
		t.Fatalf("pid 0: %+v", p)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("1 (x) S 1 1 1 0 -1 0 0 0 0 0 250 125 0 0 20 0 3 0 1000 1 512"))
	f.Add([]byte("cpu  100 10 50 1000 20 5 30 7 40 4\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := parseStat(b, 4096); err == nil && (p.User < 0 || p.System < 0) {
			t.Fatalf("negative CPU time %+v", p)
		}
		_, _ = parseMachine(b)
	})
}
