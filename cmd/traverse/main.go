// Command traverse is the real-time media transport platform: STUN, TURN,
// the one-port WebRTC SFU, signaling, the SIP border gateway and the tools
// that go with them, in one binary. Run "traverse help" for the commands.
package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/traverse-rtc/traverse/internal/config"
)

// command is one subcommand. Each lives in its own file and adds itself to
// commands from an init function, so that roles can be wired independently.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string) error
}

var commands = map[string]command{}

func register(c command) { commands[c.name] = c }

// exitError carries a process exit status other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usage() {
	fmt.Fprintf(os.Stderr, "traverse: real-time media transport (STUN, TURN, SFU, SIP border gateway).\n\nUsage: traverse COMMAND [flags]\n\nCommands:\n")
	names := slices.Sorted(maps.Keys(commands))
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun \"traverse COMMAND --help\" for a command's flags. Every flag can also be set\n"+
		"in the YAML file named by --config, or as an environment variable TRAVERSE_<FLAG>\n"+
		"(upper case, dashes as underscores). Flags override the environment, which\n"+
		"overrides the file.\n")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "help" || os.Args[1] == "-h" || os.Args[1] == "--help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "traverse: unknown command %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cmd.run(ctx, os.Args[2:])
	stop()
	if err == nil {
		return
	}
	if config.IsHelp(err) {
		return
	}
	if errors.Is(err, errConfigChecked) {
		fmt.Fprintf(os.Stderr, "traverse %s: %v\n", cmd.name, err)
		return
	}
	fmt.Fprintf(os.Stderr, "traverse %s\n", errorLine(cmd.name, err))
	var ee *exitError
	if errors.As(err, &ee) {
		os.Exit(ee.code)
	}
	os.Exit(1)
}

// errorLine is the message for a command's error: prefixed by the command
// name once, with a prefix repeated by the layers that wrapped the error
// ("turn: turn: listen: ...") said once.
func errorLine(name string, err error) string {
	parts := strings.Split(name+": "+err.Error(), ": ")
	out := parts[:1]
	for _, p := range parts[1:] {
		if p != out[len(out)-1] {
			out = append(out, p)
		}
	}
	return strings.Join(out, ": ")
}
