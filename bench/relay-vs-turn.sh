#!/usr/bin/env bash
# A relay node's cost: datagrams relayed per CPU-second of traverse relay,
# side by side with traverse turn and coturn relaying the same load, one
# after the other in one run on loopback. The relay node gets
# bench/relayload (CLIENTS sessions; side 0 sends MSGS datagrams of LEN
# bytes INTERVAL_MS apart, side 1 echoes: two relayed datagrams per
# message); the TURN servers get turnutils_uclient with the same numbers
# (bench/turn-vs-coturn.sh: each message relayed to the peer and back).
# CPU is the server process's utime+stime from /proc/PID/stat.
#
# Usage: bench/relay-vs-turn.sh [CLIENTS] [MSGS] [INTERVAL_MS] [LEN]
#   defaults: 20, 1000, 5, 172.
set -euo pipefail
clients=${1:-20}; msgs=${2:-1000}; interval=${3:-5}; len=${4:-172}
cd "$(dirname "$0")/.."
. bench/lib/cleanup.sh
free_port() { local p=$1; while ss -Hlnu "sport = :$p" | grep -q .; do p=$((p+1)); done; echo $p; }
wait_port() { for _ in $(seq 100); do ss -Hlnu "sport = :$1" | grep -q . && return 0; sleep 0.05; done; echo "port $1 never opened"; exit 1; }
hz=$(getconf CLK_TCK)
cpu() { awk -v hz="$hz" '{printf "%.3f", ($14+$15)/hz}' /proc/$1/stat; }

go build -o "$work/traverse" ./cmd/traverse
go build -o "$work/relayload" ./bench/relayload
keys=$("$work/traverse" relay --keygen)
seed=$(awk '/relay-grant-seed/ {print $2}' <<<"$keys"); pub=$(awk '/^grant-key/ {print $2}' <<<"$keys")
rport=$(free_port 36490)
"$work/traverse" relay --id bench --listen 127.0.0.1:$rport --grant-key "$pub" --admin '' --log-level warn \
  --max-sessions 100000 2>"$work/relay.log" & rpid=$!; pids+=($rpid)
wait_port $rport

echo "load: $clients sessions/clients x $msgs messages of $len bytes, ${interval} ms apart"
c0=$(cpu $rpid)
out=$("$work/relayload" -node 127.0.0.1:$rport -id bench -seed "$seed" -sessions "$clients" -msgs "$msgs" \
  -interval "${interval}ms" -len "$len")
c1=$(cpu $rpid)
read -r _ sent _ echoed _ relayed _ lost <<<"$out"
awk -v c0="$c0" -v c1="$c1" -v s="$sent" -v r="$relayed" -v l="$lost" 'BEGIN { cpu = c1 - c0;
  printf "%-9s sent %6d relayed %6d lost %5d (%.2f%%)  cpu %6.2f s  %6.2f us/relayed packet  %8.0f packets/cpu-s\n",
    "relay", s, r, l, 100*l/(2*s>0?2*s:1), cpu, (r>0? 1e6*cpu/r : 0), (cpu>0? r/cpu : 0) }'
kill $rpid 2>/dev/null || true
if command -v turnserver >/dev/null; then
  bench/turn-vs-coturn.sh "$clients" "$msgs" "$interval" "$len" | grep -v '^load:'
else
  echo "coturn not installed (apt-get install coturn): traverse turn and coturn skipped"
fi
