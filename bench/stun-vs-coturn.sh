#!/usr/bin/env bash
# STUN Binding transactions per CPU-second of the server: traverse stun
# against coturn's turnserver (STUN only), side by side in one run, on
# loopback, driven by the same bounded load generator (bench/stunload).
#
#   bench/stun-vs-coturn.sh [SECONDS_PER_RUN] [ROUNDS]
#
# Each round drives traverse then coturn for SECONDS_PER_RUN (default 5)
# and reads each server's utime+stime from /proc/PID/stat before and after.
# Prints answers per server CPU-second for both and the ratio. Bounded:
# ROUNDS (default 2) x 2 runs of at most SECONDS_PER_RUN each.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-2}
command -v turnserver >/dev/null || { echo "turnserver not installed (Debian package coturn)"; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT

# free_port P: the first UDP and TCP port from P on that nobody listens on
# (coturn uses SO_REUSEPORT: a second server on a port silently takes half).
free_port() {
	local p=$1
	while ss -Hlun "sport = :$p" | grep -q . || ss -Hltn "sport = :$p" | grep -q .; do p=$((p + 1)); done
	echo "$p"
}

go build -o "$tmp/traverse" ./cmd/traverse
go build -o "$tmp/stunload" ./bench/stunload

tport=$(free_port 23478)
# TRAVERSE_ARGS adds flags to traverse stun (for example --readers 2).
# --rate -1: the load comes from one address, which the per-source answer
# rate (100/s by default) would otherwise cut.
"$tmp/traverse" stun --listen "127.0.0.1:$tport" --admin "" --log-level warn --rate -1 ${TRAVERSE_ARGS:-} &
tpid=$!
pids+=("$tpid")

cport=$(free_port $((tport + 10)))
cat >"$tmp/turnserver.conf" <<CONF
listening-ip=127.0.0.1
listening-port=$cport
stun-only
fingerprint
no-tls
no-dtls
no-cli
no-software-attribute
pidfile=$tmp/turnserver.pid
log-file=$tmp/turnserver.log
simple-log
CONF
turnserver -c "$tmp/turnserver.conf" >/dev/null 2>&1 &
cpid=$!
pids+=("$cpid")

# Wait until both answer.
for port in "$tport" "$cport"; do
	for i in $(seq 50); do
		if "$tmp/stunload" -server "127.0.0.1:$port" -sockets 1 -burst 1 -duration 200ms -requests 1 | grep -q '"answered":1'; then break; fi
		[ "$i" = 50 ] && { echo "server on port $port does not answer"; exit 1; }
		sleep 0.1
	done
done

hz=$(getconf CLK_TCK)
# cpu PID: utime+stime in clock ticks (/proc/PID/stat, every thread).
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# runns PID: nanoseconds on CPU summed over the threads' schedstat: a
# cross-check that tick sampling did not skew the figure on a busy machine.
runns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}'; }

# drive NAME PID PORT: prints "answered cpu_seconds"
drive() {
	local before after out nsb nsa
	before=$(cpu "$2")
	nsb=$(runns "$2")
	out=$("$tmp/stunload" -server "127.0.0.1:$3" -duration "${secs}s")
	after=$(cpu "$2")
	nsa=$(runns "$2")
	local answered
	answered=$(echo "$out" | sed -E 's/.*"answered":([0-9]+).*/\1/')
	local loss
	loss=$(echo "$out" | sed -E 's/.*"loss":([0-9.e-]+).*/\1/')
	local cs
	cs=$(awk -v a="$after" -v b="$before" -v hz="$hz" 'BEGIN{printf "%.2f", (a-b)/hz}')
	local ns
	ns=$(awk -v a="$nsa" -v b="$nsb" 'BEGIN{printf "%.3f", (a-b)/1e9}')
	printf '%-9s answered %9d in %ss, loss %.4f; server CPU %6ss (stat) %6ss (schedstat): %8.0f (stat) %8.0f (schedstat) answers per CPU-second\n' \
		"$1" "$answered" "$secs" "$loss" "$cs" "$ns" "$(awk -v n="$answered" -v c="$cs" 'BEGIN{print (c>0)? n/c : 0}')" \
		"$(awk -v n="$answered" -v c="$ns" 'BEGIN{print (c>0)? n/c : 0}')" >>"$tmp/runs"
	echo "$answered $cs $ns"
}

add() { awk -v x="$1" -v y="$2" 'BEGIN{print x+y}'; }
ta=0 tc=0 tn=0 ca=0 cc=0 cn=0
for r in $(seq "$rounds"); do
	read -r a c n < <(drive traverse "$tpid" "$tport"); ta=$((ta + a)); tc=$(add "$tc" "$c"); tn=$(add "$tn" "$n")
	read -r a c n < <(drive coturn "$cpid" "$cport"); ca=$((ca + a)); cc=$(add "$cc" "$c"); cn=$(add "$cn" "$n")
done
cat "$tmp/runs"
awk -v ta="$ta" -v tc="$tc" -v tn="$tn" -v ca="$ca" -v cc="$cc" -v cn="$cn" 'BEGIN{
	t = ta / tc; c = ca / cc
	printf "traverse: %.0f STUN transactions per CPU-second (%d answers, %.2f CPU-s; schedstat: %.0f per CPU-s)\n", t, ta, tc, ta / tn
	printf "coturn:   %.0f STUN transactions per CPU-second (%d answers, %.2f CPU-s; schedstat: %.0f per CPU-s)\n", c, ca, cc, ca / cn
	printf "ratio traverse/coturn: %.2f (schedstat: %.2f)\n", t / c, (ta / tn) / (ca / cn)
}'
