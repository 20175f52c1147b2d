#!/usr/bin/env bash
# Receive-side feedback A/B with real Chromium publishers: the same tree built twice, once as it is
# (internal/rtpfeedback makes the NACKs, receiver reports and TWCC feedback toward publishers) and once
# with bench/lib/pion-feedback.patch (pion's NACK generator, receiver-report and TWCC sender
# interceptors instead; nothing else differs). Each round runs signal's TestBrowsersPublisherBitrate
# (two Chromium participants in a private network namespace) three ways: "pion" and "rtpfeedback"
# with the node on pion's data path (TRAVERSE_SFU_DATA_PATH=pion: pion's interceptors never see the
# packets the own data path takes, so it cannot be compared on; before issue 16 these two sides ran
# the own write path with pion's receive path, a combination that no longer exists), and
# "rtpfeedback+recv" on the own data path (the command's default). It prints each publisher's video bitrate
# (getStats outbound-rtp bytesSent over the window), its bandwidth estimate
# (availableOutgoingBitrate) and RTT, then the medians.
# Usage: flock /tmp/traverse-bench.lock bench/rtpfeedback-vs-pion.sh [ROUNDS] [SECONDS]  (default 4 rounds of 20 s;
# needs root and /usr/bin/chromium; bounded: about ROUNDS x 3 x (SECONDS + 12) s)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-4}
secs=${2:-20}
tmp=$(mktemp -d /tmp/rtpfeedback-ab.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
git archive HEAD | tar -x -C "$tmp"
# Uncommitted changes of the working tree too, so both sides are the tree as it is.
git diff HEAD | (cd "$tmp" && git apply --allow-empty)
patch -s -d "$tmp" -p1 < bench/lib/pion-feedback.patch
out=$tmp/results
for r in $(seq "$rounds"); do
  for side in pion rtpfeedback rtpfeedback+recv; do
    dir=$PWD path=pion
    [ "$side" = pion ] && dir=$tmp
    [ "$side" = rtpfeedback+recv ] && path=own
    (cd "$dir" && TRAVERSE_SFU_DATA_PATH=$path BITRATE_SECONDS=$secs go test -count=1 -run '^TestBrowsersPublisherBitrate$' -v ./internal/signal/ 2>&1 || true) |
      grep -o 'publisher [01]: video [0-9]* kbit/s.*estimate [0-9]* kbit/s, RTT [0-9.]* ms' |
      sed "s/^/round $r $side /" | tee -a "$out"
  done
done
for side in pion rtpfeedback rtpfeedback+recv; do
  for col in video estimate; do
    awk -v s="$side" -v c="$col" '$3 == s { for (i = 1; i < NF; i++) if ($i == c) print $(i+1) }' "$out" | sort -n |
      awk -v s="$side" -v c="$col" '{ v[NR] = $1 } END { if (NR) printf "%-16s median %-8s %s kbit/s (%d publishers)\n", s, c, v[int((NR+1)/2)], NR }'
  done
done
