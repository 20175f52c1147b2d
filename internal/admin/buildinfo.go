package admin

import (
	"runtime"
	"runtime/debug"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Version and Commit, when set at link time, override what the Go
// toolchain recorded in the binary (release builds):
//
//	go build -ldflags "-X github.com/traverse-rtc/traverse/internal/admin.Version=v1.2.0 \
//	    -X github.com/traverse-rtc/traverse/internal/admin.Commit=$(git rev-parse HEAD)" ./cmd/traverse
//
// Without them, `go install ...@v1.2.0` records the module version, and a
// build inside a git checkout records the commit (vcs.revision).
var (
	Version string
	Commit  string
)

// Build is what the binary knows of its own build.
type Build struct {
	// Version is the module version ("v1.2.0"), or "devel" for a build
	// from a checkout.
	Version string
	// Commit is the git commit, "" when unknown; Modified says the work
	// tree had uncommitted changes.
	Commit   string
	Modified bool
	// GoVersion is the toolchain that built the binary ("go1.25.1").
	GoVersion string
	// Platform is GOOS/GOARCH.
	Platform string
}

var buildOnce = sync.OnceValue(readBuild)

// BuildInfo returns the binary's build information.
func BuildInfo() Build { return buildOnce() }

func readBuild() Build {
	b := Build{Version: "devel", GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			b.Version = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Commit = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if Version != "" {
		b.Version = Version
	}
	if Commit != "" {
		b.Commit, b.Modified = Commit, false
	}
	return b
}

// newBuildInfo is the traverse_build_info gauge: always 1, the build in
// its labels, so a dashboard can show which version each process runs.
func newBuildInfo() prometheus.Collector {
	b := BuildInfo()
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "traverse_build_info",
		Help: "Always 1; the labels say which build of traverse this process runs.",
		ConstLabels: prometheus.Labels{"version": b.Version, "commit": b.Commit, "goversion": b.GoVersion,
			"platform": b.Platform},
	}, func() float64 { return 1 })
}
