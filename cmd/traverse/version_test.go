package main

import (
	"bytes"
	"runtime"
	"strings"
	"testing"

	"github.com/traverse-rtc/traverse/internal/admin"
)

func TestVersionCommand(t *testing.T) {
	var out bytes.Buffer
	if err := printVersion(&out); err != nil {
		t.Fatal(err)
	}
	b := admin.BuildInfo()
	for _, want := range []string{"traverse " + b.Version + "\n", "commit ", runtime.Version() + " " + runtime.GOOS} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("traverse version printed %q, want %q in it", out.String(), want)
		}
	}
	if err := runVersion(t.Context(), []string{"extra"}); err == nil {
		t.Error("traverse version extra: accepted")
	}
}
