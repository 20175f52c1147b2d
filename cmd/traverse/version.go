package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/traverse-rtc/traverse/internal/admin"
)

// runVersion prints the version, commit and Go version of this binary
// (admin.BuildInfo; the same as traverse_build_info on /metrics).
func runVersion(_ context.Context, args []string) error {
	fs := newFlagSet("version", "version")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return printVersion(os.Stdout)
}

func printVersion(w io.Writer) error {
	b := admin.BuildInfo()
	commit := b.Commit
	if commit == "" {
		commit = "unknown"
	}
	if b.Modified {
		commit += " (modified)"
	}
	_, err := fmt.Fprintf(w, "traverse %s\ncommit %s\n%s %s\n", b.Version, commit, b.GoVersion, b.Platform)
	return err
}

func init() {
	register(command{name: "version", summary: "print the version, commit and Go version of this binary", run: runVersion})
}
