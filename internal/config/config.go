// Package config loads a role's configuration from, in increasing order of
// precedence: the Config struct's zero-value defaults as filled in by the
// caller, a YAML file (--config), environment variables, and command-line
// flags.
//
// Every flag of a role is also an environment variable: the flag name upper
// cased, with dashes turned into underscores, behind the prefix TRAVERSE_.
// For example --other-address of the stun role is TRAVERSE_OTHER_ADDRESS.
// List flags (those that may repeat) take a comma-separated list from the
// environment. Each layer replaces, rather than appends to, a list set by a
// lower layer.
package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// EnvPrefix is the prefix of every environment variable read by Load.
const EnvPrefix = "TRAVERSE_"

// ErrHelp is returned by Load when -h or --help was asked for; the usage has
// been printed.
var ErrHelp = flag.ErrHelp

// list is implemented by list flags: Reset empties the list so that a
// higher-precedence layer replaces it instead of appending to it.
type list interface {
	Reset()
	Values() []string
}

// Load parses args with fs, whose flags must be bound to the fields of cfg,
// and fills cfg from the file named by the flag "config" (if fs defines it),
// then the environment, then the flags given in args. cfg must be a pointer
// to a struct with yaml tags; a key of the file that no field takes is an
// error naming it (see DecodeStrict). Flag values other than lists must survive a
// round trip through String and Set. Load returns the positional arguments.
func Load(fs *flag.FlagSet, args []string, cfg any) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	// Remember what the command line said before the lower layers load.
	type given struct {
		f      *flag.Flag
		value  string
		values []string
	}
	var flags []given
	configFile := os.Getenv(EnvPrefix + "CONFIG")
	fs.Visit(func(f *flag.Flag) {
		g := given{f: f, value: f.Value.String()}
		if l, ok := f.Value.(list); ok {
			g.values = append([]string(nil), l.Values()...)
		}
		if f.Name == "config" {
			configFile = g.value
		}
		flags = append(flags, g)
	})
	if fs.Lookup("config") == nil {
		configFile = ""
	}

	if configFile != "" {
		b, err := os.ReadFile(configFile)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("config: %s: %w", configFile, err)
		}
		if doc.Kind != 0 {
			if err := DecodeStrict(&doc, cfg, ""); err != nil {
				return nil, fmt.Errorf("config: %s: %w", configFile, err)
			}
		}
	}

	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if envErr != nil || f.Name == "config" {
			return
		}
		v, ok := os.LookupEnv(EnvName(f.Name))
		if !ok {
			return
		}
		if l, ok := f.Value.(list); ok {
			l.Reset()
			for _, part := range strings.Split(v, ",") {
				if part = strings.TrimSpace(part); part == "" {
					continue
				}
				if err := f.Value.Set(part); err != nil {
					envErr = fmt.Errorf("config: %s=%q: %w", EnvName(f.Name), v, err)
					return
				}
			}
			return
		}
		if err := f.Value.Set(v); err != nil {
			envErr = fmt.Errorf("config: %s=%q: %w", EnvName(f.Name), v, err)
		}
	})
	if envErr != nil {
		return nil, envErr
	}

	for _, g := range flags {
		if l, ok := g.f.Value.(list); ok {
			l.Reset()
			for _, v := range g.values {
				if err := g.f.Value.Set(v); err != nil {
					return nil, fmt.Errorf("config: --%s %q: %w", g.f.Name, v, err)
				}
			}
			continue
		}
		if err := g.f.Value.Set(g.value); err != nil {
			return nil, fmt.Errorf("config: --%s %q: %w", g.f.Name, g.value, err)
		}
	}
	return fs.Args(), nil
}

// EnvName is the environment variable that stands for the flag name.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// IsHelp reports whether err is the parser's answer to -h or --help.
func IsHelp(err error) bool { return errors.Is(err, flag.ErrHelp) }

// Strings is a list flag: each use of the flag appends one value.
type Strings struct{ P *[]string }

// String implements flag.Value.
func (s Strings) String() string {
	if s.P == nil {
		return ""
	}
	return strings.Join(*s.P, ",")
}

// Set implements flag.Value.
func (s Strings) Set(v string) error { *s.P = append(*s.P, v); return nil }

// Reset empties the list.
func (s Strings) Reset() { *s.P = nil }

// Values returns the list.
func (s Strings) Values() []string { return *s.P }
