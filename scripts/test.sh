#!/usr/bin/env bash
# Installs what the tests need and runs them: the one test command (README.md).
#
# As root on Debian it installs the third-party peers the tests run against
# (coturn's tools, sipp, rtpengine, janus, baresip, chromium, miniupnpd, nftables). It
# then checks formatting, vets, runs every test (the network-namespace lab
# tests included, which need root) and runs each fuzz target for a few
# seconds (FUZZTIME, default 2s: 82 targets keep the run under 20 minutes; 0 skips fuzzing;
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
fuzzlog=$(mktemp)
trap 'rm -f "$fuzzlog"' EXIT
# fuzz_one runs one target. Go 1.26's fuzz coordinator can end a clean run
# with a bare "context deadline exceeded" when a worker is slow to stop at the
# -fuzztime deadline (go.dev/issue/75804, fixed in Go 1.27). Only that exact
# failure, with no failing input written, is run again, at most twice; any
# other failure, or a written input, fails the run.
fuzz_one() {
	local dir=$1 fn=$2 try
	for try in 1 2 3; do
		if go test -run '^$' -fuzz "^${fn}\$" -fuzztime "$fuzztime" "$dir" >"$fuzzlog" 2>&1; then
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
	targets=$(grep -rl --include='*_test.go' '^func Fuzz' . | sort || true)
	for f in $targets; do
		dir=$(dirname "$f")
		for fn in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | cut -d' ' -f2); do
			echo "fuzz $dir $fn ($fuzztime)"
			fuzz_one "$dir" "$fn"
		done
	done
fi
echo "all tests passed"
