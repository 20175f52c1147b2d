package main

import (
	"bufio"
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// docCommand is one command line found in a code block of a document.
type docCommand struct {
	file string
	line int
	args []string // after "traverse"
	text string
}

// docCommands returns the traverse command lines in the code blocks
// (indented four spaces, or fenced) of file, except those of a block the
// next paragraph marks "(illustrative)".
func docCommands(t *testing.T, file string) []docCommand {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out, block []docCommand
	inFence, inBlock := false, false
	flush := func(illustrative bool) {
		if !illustrative {
			out = append(out, block...)
		}
		block, inBlock = nil, false
	}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		// A command continued on the next line ("\" at the end) is one.
		for strings.HasSuffix(line, "\\") && sc.Scan() {
			line = strings.TrimSuffix(line, "\\") + " " + strings.TrimSpace(sc.Text())
			n++
		}
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "```"):
			if inFence {
				inFence, inBlock = false, true
			} else {
				inFence = true
			}
			continue
		case inFence || strings.HasPrefix(line, "    ") || strings.HasPrefix(line, "\t"):
			inBlock = true
			if c, ok := parseDocCommand(trimmed); ok {
				c.file, c.line = file, n
				block = append(block, c)
			}
			continue
		case trimmed == "":
			continue
		}
		// The first paragraph line after a block says whether it is
		// illustrative.
		if inBlock {
			flush(strings.HasPrefix(trimmed, "(illustrative)"))
		}
	}
	flush(false)
	return out
}

var docComment = regexp.MustCompile(`\s#\s.*$`)

// parseDocCommand splits a documented traverse command line into its
// arguments, reading the synopsis notation: [optional] parts are taken,
// a|b alternatives give the first, "..." is dropped, # starts a comment.
func parseDocCommand(s string) (docCommand, bool) {
	s = strings.TrimPrefix(s, "$ ")
	for _, p := range []string{"go run ./cmd/traverse ", "./traverse ", "traverse "} {
		if rest, ok := strings.CutPrefix(s, p); ok {
			s = rest
			goto found
		}
	}
	return docCommand{}, false
found:
	text := s
	s = docComment.ReplaceAllString(s, "")
	var args []string
	var cur strings.Builder
	quote := byte(0)
	for i := 0; i <= len(s); i++ {
		if i == len(s) || (quote == 0 && (s[i] == ' ' || s[i] == '\t')) {
			if cur.Len() > 0 {
				args = append(args, cur.String())
				cur.Reset()
			}
			continue
		}
		switch c := s[i]; {
		case quote != 0 && c == quote:
			quote = 0
		case quote == 0 && (c == '\'' || c == '"'):
			quote = c
		default:
			cur.WriteByte(c)
		}
	}
	var out []string
	for _, a := range args {
		// Synopsis brackets around words ("[--json]", "[--x [--y 2m]]"),
		// not those inside a value ("URL[,URL...]").
		a = strings.TrimLeft(a, "[")
		for strings.HasSuffix(a, "]") && strings.Count(a, "]") > strings.Count(a, "[") {
			a = strings.TrimSuffix(a, "]")
		}
		if a == "" || a == "\\" {
			continue
		}
		if strings.Contains(a, "|") && !strings.Contains(a, "=") {
			a, _, _ = strings.Cut(a, "|")
		}
		out = append(out, a)
	}
	return docCommand{args: out, text: text}, len(out) > 0
}

// placeholder reports whether a documented value stands for one
// (ADDR, HOST:PORT, URL[,URL...], DIR/signal.creds, NAME:PASSWORD).
var placeholder = regexp.MustCompile(`^(\.\.\.|[A-Z][A-Z0-9_]*([:/,.\[\]=-]|[A-Z0-9_]|[a-z.-]+\.[a-z]+)*)$`)

// commandFlags returns the flag set of command args[0] (and the lab
// subcommand), by asking it for --help: nothing else runs.
func commandFlags(t *testing.T, args []string) (*flag.FlagSet, int) {
	t.Helper()
	name := args[0]
	cmd, ok := commands[name]
	if !ok {
		return nil, 0
	}
	helpArgs, used := []string{"--help"}, 1
	if len(args) > 1 && subcommandsWithFlags[name][args[1]] {
		helpArgs, used = []string{args[1], "--help"}, 2
	} else if name == "lab" {
		return nil, 2 // list, down, clean take no flags
	}
	var fs *flag.FlagSet
	flagSetMade = func(f *flag.FlagSet) { fs = f }
	defer func() { flagSetMade = nil }()
	stderr := os.Stderr
	devnull, _ := os.Open(os.DevNull)
	os.Stderr = devnull
	defer func() { os.Stderr = stderr; devnull.Close() }()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = cmd.run(ctx, helpArgs)
	return fs, used
}

// subcommandsWithFlags are the subcommands that have flag sets of their own.
var subcommandsWithFlags = map[string]map[string]bool{
	"lab": {"up": true, "failover": true, "matrix": true, "upgrade": true},
	"sfu": {"drain": true},
}

type boolFlag interface{ IsBoolFlag() bool }

// TestDocCommands: every traverse command line in README.md and docs/*.md
// names a command that exists and flags it takes, with values of the
// right form (placeholders aside), unless its block is marked
// "(illustrative)": the documentation cannot drift from the flags.
func TestDocCommands(t *testing.T) {
	files, _ := filepath.Glob("../../docs/*.md")
	files = append([]string{"../../README.md"}, files...)
	checked := 0
	verbose := os.Getenv("DOCTEST_VERBOSE") != ""
	for _, file := range files {
		for _, c := range docCommands(t, file) {
			where := filepath.Base(file) + ":" + itoa(c.line) + ": traverse " + c.text
			problems, ok := checkDocCommand(t, c)
			for _, p := range problems {
				t.Errorf("%s: %s", where, p)
			}
			if ok {
				checked++
				if verbose {
					t.Logf("%s -> %q", where, c.args)
				}
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d command lines checked: is the parser broken?", checked)
	}
}

// checkDocCommand returns what is wrong with a documented command line;
// checked is false when there were no flags to check it against.
func checkDocCommand(t *testing.T, c docCommand) (problems []string, checked bool) {
	if _, ok := commands[c.args[0]]; !ok {
		if placeholder.MatchString(c.args[0]) {
			return nil, false // "traverse COMMAND --help"
		}
		return []string{"no command " + strconv.Quote(c.args[0])}, false
	}
	fs, used := commandFlags(t, c.args)
	if fs == nil {
		if used > 0 && len(c.args) > used && strings.HasPrefix(c.args[used], "-") {
			problems = append(problems, c.args[0]+" takes no flags")
		}
		return problems, false
	}
	args := c.args[used:]
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			continue // a positional argument
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "h" || name == "help" {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			problems = append(problems, "traverse "+c.args[0]+" has no flag --"+name)
			continue
		}
		if b, ok := f.Value.(boolFlag); ok && b.IsBoolFlag() {
			if hasValue && value != "true" && value != "false" {
				problems = append(problems, "--"+name+"="+value+": want true or false")
			}
			continue
		}
		if !hasValue {
			if i+1 >= len(args) {
				problems = append(problems, "--"+name+" needs a value")
				continue
			}
			i++
			value = args[i]
		}
		if placeholder.MatchString(value) {
			continue
		}
		if err := f.Value.Set(value); err != nil {
			problems = append(problems, "--"+name+" "+strconv.Quote(value)+": "+err.Error())
		}
	}
	return problems, true
}

// TestDocCommandsCatchDrift: the checker finds what drifts.
func TestDocCommandsCatchDrift(t *testing.T) {
	tests := []struct {
		line string
		bad  bool
	}{
		{"traverse turn --listen 127.0.0.1:3478 --realm R [--user NAME:PASSWORD] [--user ...]", false},
		{"traverse natcheck [--json] [--lifetime [--lifetime-max 2m]] HOST:PORT", false},
		{"traverse token --token-key KEY --room demo --identity alice [--publish=false] [--ttl 1h]", false},
		{"traverse turn --lisen 127.0.0.1:3478", true},
		{"traverse turn --max-allocations lots", true},
		{"traverse natcheck --json=maybe HOST:PORT", true},
		{"traverse token --ttl", true},
		{"traverse nosuch --x", true},
		{"traverse lab list --all", true},
	}
	for _, tt := range tests {
		c, ok := parseDocCommand(tt.line)
		if !ok {
			t.Fatalf("%q not parsed", tt.line)
		}
		problems, _ := checkDocCommand(t, c)
		if (len(problems) > 0) != tt.bad {
			t.Errorf("%q: problems %q", tt.line, problems)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
