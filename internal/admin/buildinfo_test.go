package admin

import (
	"log/slog"
	"runtime"
	"testing"
)

// TestBuildInfoGauge: /metrics carries traverse_build_info with the build's
// version and Go version.
func TestBuildInfoGauge(t *testing.T) {
	s := New(slog.New(slog.DiscardHandler))
	mfs, err := s.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	b := BuildInfo()
	for _, mf := range mfs {
		if mf.GetName() != "traverse_build_info" {
			continue
		}
		labels := map[string]string{}
		for _, l := range mf.GetMetric()[0].GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["version"] != b.Version || labels["goversion"] != runtime.Version() || mf.GetMetric()[0].GetGauge().GetValue() != 1 {
			t.Fatalf("traverse_build_info = %v %v", labels, mf.GetMetric()[0].GetGauge().GetValue())
		}
		return
	}
	t.Fatal("no traverse_build_info")
}

// TestBuildLdflags: the link-time Version and Commit win over what the
// toolchain recorded.
func TestBuildLdflags(t *testing.T) {
	defer func(v, c string) { Version, Commit = v, c }(Version, Commit)
	Version, Commit = "v9.8.7", "0123abcd"
	b := readBuild()
	if b.Version != "v9.8.7" || b.Commit != "0123abcd" || b.Modified || b.GoVersion != runtime.Version() {
		t.Fatalf("readBuild = %+v", b)
	}
}
