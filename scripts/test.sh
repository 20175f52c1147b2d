#!/usr/bin/env bash
# Installs what the tests need and runs them: the one test command (README.md).
#
# As root on Debian it installs the third-party peers the tests run against
# (coturn's tools, sipp, rtpengine, janus, baresip, chromium, miniupnpd, nftables). It
# then checks formatting, vets, runs every test (the network-namespace lab
# tests included, which need root) and runs each fuzz target for a few
# seconds (FUZZTIME, default 2s each: 84 targets in 27 packages, about 4.5 minutes; 0 skips fuzzing;
# longer runs by hand, e.g. FUZZTIME=60s).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(coturn sip-tester rtpengine-daemon rtpengine-utils janus baresip chromium chromium-driver miniupnpd-nftables
	nftables iproute2 tcpdump procps ca-certificates systemd)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	missing=()
	for p in "${packages[@]}"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "installing: ${missing[*]}"
		apt-get update -q >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
	fi
else
	echo "not root: third-party peers are not installed; tests that need them or the lab will skip"
fi

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:"; echo "$unformatted"; exit 1
fi
go vet ./...
# One package at a time (-p 1): the media tests (browsers, SIPp, SFU joins)
# are real-time and share 2 cores; run in parallel they starve each other
# into timeouts that say nothing about the code.
go test -p 1 -count=1 -timeout 20m ./...
# internal/sfu's suite above runs the SFU's own data path (the default, what
# the traverse command runs); pion's data path stays supported (--data-path
# pion), so the suite runs once more on it: about 35 s, the tests of the own
# path's mechanisms skip there.
TRAVERSE_SFU_DATA_PATH=pion go test -p 1 -count=1 -timeout 10m ./internal/sfu/

fuzztime=${FUZZTIME:-2s}
fuzzdir=$(mktemp -d)
trap 'rm -rf "$fuzzdir"' EXIT
fuzzlog=$fuzzdir/log
# fuzz_one runs one target with its package's fuzzing test binary, built
# once per package (go test -c -fuzz: the same instrumented binary go test
# -fuzz builds, and relinks, for every target), in the package's directory
# and with go test's fuzz cache, as go test -fuzz runs it. Go 1.26's fuzz
# coordinator can end a clean run with a bare "context deadline exceeded"
# when a worker is slow to stop at the -fuzztime deadline
# (go.dev/issue/75804, fixed in Go 1.27). Only that exact failure, with no
# failing input written, is run again, at most twice; any other failure, or
# a written input, fails the run.
fuzz_one() {
	local dir=$1 fn=$2 bin=$3 cache=$4 try
	for try in 1 2 3; do
		if (cd "$dir" && "$bin" -test.paniconexit0 -test.run '^$' -test.fuzz "^${fn}\$" -test.fuzztime "$fuzztime" \
			-test.fuzzcachedir "$cache") >"$fuzzlog" 2>&1; then
			return 0
		fi
		if grep -q 'Failing input written' "$fuzzlog" ||
			[ "$(grep -c -- '--- FAIL' "$fuzzlog")" != 1 ] ||
			! grep -qx '    context deadline exceeded' "$fuzzlog"; then
			break
		fi
		echo "fuzz $dir $fn: the coordinator's stop race (go.dev/issue/75804), no failing input; running again"
	done
	cat "$fuzzlog"
	exit 1
}
if [ "$fuzztime" != 0 ]; then
	# Every Fuzz target in the module, a few seconds each.
	fuzzcache=$(go env GOCACHE)/fuzz
	for dir in $(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do
		bin=$fuzzdir/fuzz.test
		go test -c -fuzz . -o "$bin" "$dir"
		cache=$fuzzcache/$(go list "$dir")
		for fn in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | cut -d' ' -f2 | sort); do
			echo "fuzz $dir $fn ($fuzztime)"
			fuzz_one "$dir" "$fn" "$bin" "$cache"
		done
	done
fi
echo "all tests passed"
