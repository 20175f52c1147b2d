package config

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

type testConfig struct {
	Config  string        `yaml:"-"`
	Listen  string        `yaml:"listen"`
	Users   []string      `yaml:"users"`
	Timeout time.Duration `yaml:"timeout"`
	Verbose bool          `yaml:"verbose"`
}

func newFlags(c *testConfig) *flag.FlagSet {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.StringVar(&c.Config, "config", "", "")
	fs.StringVar(&c.Listen, "listen", c.Listen, "")
	fs.Var(Strings{&c.Users}, "user", "")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "")
	fs.BoolVar(&c.Verbose, "verbose", c.Verbose, "")
	return fs
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(file, []byte("listen: 1.1.1.1:1\nusers: [a, b]\ntimeout: 3s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want testConfig
		rest []string
	}{
		{"defaults", nil, nil, testConfig{Listen: "127.0.0.1:3478", Timeout: time.Second}, []string{}},
		{"file", nil, []string{"--config", file}, testConfig{Config: file, Listen: "1.1.1.1:1", Users: []string{"a", "b"}, Timeout: 3 * time.Second}, []string{}},
		{"env over file", map[string]string{"TRAVERSE_LISTEN": "2.2.2.2:2", "TRAVERSE_USER": "c, d"}, []string{"--config", file},
			testConfig{Config: file, Listen: "2.2.2.2:2", Users: []string{"c", "d"}, Timeout: 3 * time.Second}, []string{}},
		{"flags over env", map[string]string{"TRAVERSE_LISTEN": "2.2.2.2:2", "TRAVERSE_USER": "c"}, []string{"--config", file, "--listen", "3.3.3.3:3", "--user", "x", "--user", "y", "--verbose", "pos"},
			testConfig{Config: file, Listen: "3.3.3.3:3", Users: []string{"x", "y"}, Timeout: 3 * time.Second, Verbose: true}, []string{"pos"}},
		{"config from env", map[string]string{"TRAVERSE_CONFIG": file}, nil, testConfig{Listen: "1.1.1.1:1", Users: []string{"a", "b"}, Timeout: 3 * time.Second}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			c := testConfig{Listen: "127.0.0.1:3478", Timeout: time.Second}
			rest, err := Load(newFlags(&c), tt.args, &c)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c, tt.want) {
				t.Errorf("got %+v, want %+v", c, tt.want)
			}
			if len(rest) != len(tt.rest) || (len(rest) > 0 && !reflect.DeepEqual(rest, tt.rest)) {
				t.Errorf("rest = %q, want %q", rest, tt.rest)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	c := testConfig{}
	if _, err := Load(newFlags(&c), []string{"--timeout", "soon"}, &c); err == nil {
		t.Error("bad duration accepted")
	}
	c = testConfig{}
	if _, err := Load(newFlags(&c), []string{"--config", "/nonexistent/x.yaml"}, &c); err == nil {
		t.Error("missing file accepted")
	}
	t.Setenv("TRAVERSE_TIMEOUT", "never")
	c = testConfig{}
	if _, err := Load(newFlags(&c), nil, &c); err == nil {
		t.Error("bad env accepted")
	}
	c = testConfig{}
	if _, err := Load(newFlags(&c), []string{"--nope"}, &c); err == nil {
		t.Error("unknown flag accepted")
	}
}

func TestDefault(t *testing.T) {
	n, f, d := 0, -1.5, 3*time.Second
	Default(&n, 7)
	Default(&f, 2.5)
	Default(&d, time.Minute)
	if n != 7 || f != 2.5 || d != 3*time.Second {
		t.Fatalf("got %d %v %v, want 7 2.5 3s", n, f, d)
	}
}
