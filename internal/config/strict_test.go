package config

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

type inner struct {
	Level string `yaml:"level"`
}

type embedded struct {
	Nats string `yaml:"nats"`
}

type strictConfig struct {
	Config   string         `yaml:"-"`
	Listen   netip.AddrPort `yaml:"listen"`
	Users    []string       `yaml:"user"`
	Timeout  time.Duration  `yaml:"timeout"`
	Log      inner          `yaml:"log"`
	Sections map[string]inner
	List     []inner `yaml:"list"`
	embedded `yaml:",inline"`
	hidden   int
}

func TestDecodeStrict(t *testing.T) {
	tests := []struct {
		name, yaml, err string
	}{
		{"good", "listen: 127.0.0.1:1\nuser: [a]\ntimeout: 2s\nlog:\n  level: x\nnats: n\nsections:\n  a:\n    level: y\nlist:\n  - level: z\n", ""},
		{"empty mapping", "{}\n", ""},
		{"top unknown", "listen: 127.0.0.1:1\nlisen: x\n", `line 2: unknown key "lisen"`},
		{"dash field", "config: x\n", `unknown key "config"`},
		{"unexported", "hidden: 1\n", `unknown key "hidden"`},
		{"nested unknown", "log:\n  levle: x\n", `line 2: unknown key "log.levle"`},
		{"in map", "sections:\n  a:\n    lvl: y\n", `unknown key "sections.a.lvl"`},
		{"in list", "list:\n  - level: z\n  - lvl: z\n", `unknown key "list[1].lvl"`},
		{"merge", "base: &b\n  level: x\nlog:\n  <<: *b\n", `unknown key "base"`},
		{"merge ok", "log: &b\n  level: x\n", ""},
		{"bad value", "timeout: soon\n", "cannot unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var doc yaml.Node
			if err := yaml.Unmarshal([]byte(tt.yaml), &doc); err != nil {
				t.Fatal(err)
			}
			var c strictConfig
			err := DecodeStrict(&doc, &c, "")
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("got %v, want %q", err, tt.err)
			}
			if strings.Contains(tt.err, "unknown key") && !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("%v is not ErrUnknownKey", err)
			}
		})
	}
}

func TestLoadRefusesUnknownKey(t *testing.T) {
	file := t.TempDir() + "/c.yaml"
	if err := writeFile(file, "listen: 1.1.1.1:1\nverbos: true\n"); err != nil {
		t.Fatal(err)
	}
	c := testConfig{}
	_, err := Load(newFlags(&c), []string{"--config", file}, &c)
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), `"verbos"`) || !strings.Contains(err.Error(), file) {
		t.Fatalf("got %v", err)
	}
	// An empty file is no configuration, not an error.
	if err := writeFile(file, "# nothing\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(newFlags(&c), []string{"--config", file}, &c); err != nil {
		t.Fatal(err)
	}
}

func TestKeys(t *testing.T) {
	got := strings.Join(Keys(&strictConfig{}), " ")
	if got != "list listen log nats sections timeout user" {
		t.Fatalf("Keys = %q", got)
	}
}

func writeFile(name, body string) error { return os.WriteFile(name, []byte(body), 0o600) }

// FuzzDecodeStrict: any YAML file is refused with an error or decoded,
// never a panic; what DecodeStrict accepts, yaml.v3 accepts too, and a key
// it refuses is one no field takes.
func FuzzDecodeStrict(f *testing.F) {
	for _, s := range []string{"listen: 127.0.0.1:1\nuser: [a]\n", "log:\n  level: x\n", "a: &x {b: 1}\nc: *x\n",
		"<<: {listen: x}\n", "list:\n  - level: z\n  - {lvl: 1}\n", "sections: {a: {level: b}}\n", "- 1\n", "!!binary x", "{"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var doc yaml.Node
		if yaml.Unmarshal(b, &doc) != nil || doc.Kind == 0 {
			return
		}
		var c strictConfig
		err := DecodeStrict(&doc, &c, "")
		var plain strictConfig
		if err == nil && doc.Decode(&plain) != nil {
			t.Fatalf("strict accepted what yaml.v3 refuses: %q", b)
		}
	})
}
