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
# ROUNDS (default 2; use 3 or more for medians) x 2 runs of at most SECONDS_PER_RUN each.
#
# MODES="traverse coturn ebpf" adds traverse stun --offload ebpf (needs
# root): the kernel answers, in a network namespace of its own (lo only;
# nothing attached to the root namespace), driven by the same stunload
# inside it. Its server process does almost nothing, so every mode is also
# counted WHOLE: server + stunload (bash time) + softirq (/proc/stat, all
# CPUs) + ksoftirqd, answers per whole CPU-second. The whole figure
# includes the load generator (the same for every mode) and softirq time
# of anything else on the machine: it is the conservative one.
#
# TOPO=veth (root) runs every mode over the same topology instead: the
# load generator in one network namespace, the servers in another, one
# veth pair per mode (10.98.N.1 -> 10.98.N.2), the kernel path attached to
# its server's veth. The generator's side of each pair segments in
# software (gso_max_segs 1), so stunload sends a burst of requests in one
# write (-gso, UDP_SEGMENT; VETH_GEN="" turns it off): its own cost per
# request falls, the same for every server, and each server still gets
# one datagram per request, as from a network. (Its -gro reads answers a
# device merged; a veth does not merge them here, as "answers per
# datagram read" shows, so it is left off.)
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

# coturn_conf IP PORT: coturn as a STUN-only server (its config file).
coturn_conf() {
	cat >"$tmp/turnserver.conf" <<CONF
listening-ip=$1
listening-port=$2
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
}

modes=(${MODES:-traverse coturn})
topo=${TOPO:-lo}
go build -o "$tmp/traverse" ./cmd/traverse
go build -o "$tmp/stunload" ./bench/stunload
declare -A spid sport sns saddr sload
netns=""
nsg=""
cleanup_ns() {
	[ -z "$netns" ] || ip netns del "$netns" 2>/dev/null || true
	[ -z "$nsg" ] || ip netns del "$nsg" 2>/dev/null || true
}
trap 'cleanup; cleanup_ns' EXIT

if [ "$topo" = veth ]; then
	[ "$(id -u)" = 0 ] || { echo "TOPO=veth needs root"; exit 1; }
	netns=trv-stunbench-s-$$
	nsg=trv-stunbench-g-$$
	ip netns add "$netns"
	ip netns add "$nsg"
	ip -n "$netns" link set lo up
	ip -n "$nsg" link set lo up
	i=0
	for m in "${modes[@]}"; do
		i=$((i + 1))
		ip link add "g$i" netns "$nsg" type veth peer name "s$i" netns "$netns"
		ip -n "$nsg" addr add "10.98.$i.1/24" dev "g$i"
		ip -n "$netns" addr add "10.98.$i.2/24" dev "s$i"
		ip -n "$nsg" link set "g$i" up gso_max_segs 1
		ip -n "$netns" link set "s$i" up
		saddr[$m]=10.98.$i.2; sport[$m]=3478; sns[$m]="ip netns exec $nsg"
		sload[$m]="-local 10.98.$i.1 ${VETH_GEN--gso}"
		inns="ip netns exec $netns"
		case $m in
		traverse)
			$inns "$tmp/traverse" stun --listen "${saddr[$m]}:3478" --admin "" --log-level warn --rate -1 ${TRAVERSE_ARGS:-} &
			;;
		ebpf)
			$inns "$tmp/traverse" stun --listen "${saddr[$m]}:3478" --admin "" --log-level warn --rate -1 \
				--offload ebpf --offload-interface "s$i" ${TRAVERSE_ARGS:-} &
			;;
		coturn)
			coturn_conf "${saddr[$m]}" 3478
			$inns turnserver -c "$tmp/turnserver.conf" >/dev/null 2>&1 &
			;;
		*) echo "unknown mode $m"; exit 1 ;;
		esac
		spid[$m]=$!
		pids+=("$!")
	done
else

tport=$(free_port 23478)
# TRAVERSE_ARGS adds flags to traverse stun (for example --readers 2).
# --rate -1: the load comes from one address, which the per-source answer
# rate (100/s by default) would otherwise cut.
"$tmp/traverse" stun --listen "127.0.0.1:$tport" --admin "" --log-level warn --rate -1 ${TRAVERSE_ARGS:-} &
tpid=$!
pids+=("$tpid")

cport=$(free_port $((tport + 10)))
coturn_conf 127.0.0.1 "$cport"
turnserver -c "$tmp/turnserver.conf" >/dev/null 2>&1 &
cpid=$!
pids+=("$cpid")

spid[traverse]=$tpid; sport[traverse]=$tport; sns[traverse]=""
spid[coturn]=$cpid; sport[coturn]=$cport; sns[coturn]=""
saddr[traverse]=127.0.0.1; saddr[coturn]=127.0.0.1
for m in "${modes[@]}"; do
	[ "$m" = ebpf ] || continue
	[ "$(id -u)" = 0 ] || { echo "mode ebpf needs root"; exit 1; }
	netns=trv-stunbench-$$
	ip netns add "$netns"
	ip -n "$netns" link set lo up
	ip netns exec "$netns" "$tmp/traverse" stun --listen "127.0.0.1:3478" --admin "" --log-level warn --rate -1 \
		--offload ebpf --offload-interface lo ${TRAVERSE_ARGS:-} &
	spid[ebpf]=$!; sport[ebpf]=3478; sns[ebpf]="ip netns exec $netns"; saddr[ebpf]=127.0.0.1
	pids+=("$!")
done
fi

# Wait until every server answers.
for m in "${modes[@]}"; do
	for i in $(seq 50); do
		if ${sns[$m]} "$tmp/stunload" -server "${saddr[$m]}:${sport[$m]}" ${sload[$m]:-} -sockets 1 -burst 1 -duration 200ms -requests 1 | grep -q '"answered":1'; then break; fi
		[ "$i" = 50 ] && { echo "$m on port ${sport[$m]} does not answer"; exit 1; }
		sleep 0.1
	done
done

hz=$(getconf CLK_TCK)
# cpu PID: utime+stime in clock ticks (/proc/PID/stat, every thread).
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# runns PID: nanoseconds on CPU summed over the threads' schedstat: a
# cross-check that tick sampling did not skew the figure on a busy machine.
runns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}'; }

softirq() { awk '/^cpu / {print $8}' /proc/stat; }
ksoftirqd() { local s=0 p; for p in $(pgrep '^ksoftirqd/'); do s=$((s + $(cpu "$p"))); done; echo $s; }

# drive MODE: prints "answered server_cpu_seconds schedstat_seconds whole_cpu_seconds"
drive() {
	local m=$1 pid=${spid[$1]} before after out nsb nsa q0 q1 k0 k1 lt
	before=$(cpu "$pid"); nsb=$(runns "$pid"); q0=$(softirq); k0=$(ksoftirqd)
	TIMEFORMAT='%U %S'
	{ time ${sns[$m]} "$tmp/stunload" -server "${saddr[$m]}:${sport[$m]}" ${sload[$m]:-} -duration "${secs}s" ${STUNLOAD_ARGS:-} >"$tmp/out" 2>/dev/null; } 2>"$tmp/time"
	after=$(cpu "$pid"); nsa=$(runns "$pid"); q1=$(softirq); k1=$(ksoftirqd)
	out=$(cat "$tmp/out"); lt=$(awk '{print $1 + $2}' "$tmp/time")
	local answered loss cs ns whole reads single
	answered=$(echo "$out" | sed -E 's/.*"answered":([0-9]+).*/\1/')
	reads=$(echo "$out" | sed -E 's/.*"datagrams_read":([0-9]+).*/\1/')
	loss=$(echo "$out" | sed -E 's/.*"loss":([0-9.e-]+).*/\1/')
	cs=$(awk -v a="$after" -v b="$before" -v hz="$hz" 'BEGIN{printf "%.2f", (a-b)/hz}')
	ns=$(awk -v a="$nsa" -v b="$nsb" 'BEGIN{printf "%.3f", (a-b)/1e9}')
	whole=$(awk -v c="$cs" -v l="$lt" -v q=$((q1 - q0)) -v k=$((k1 - k0)) -v hz="$hz" 'BEGIN{printf "%.2f", c + l + (q + k)/hz}')
	# single: each tick once. Tick accounting (no CONFIG_IRQ_TIME_ACCOUNTING)
	# adds a softirq tick both to the task it interrupted and to /proc/stat's
	# softirq column, so whole counts softirq work done inside the server's
	# or stunload's system calls (all of the kernel path's answers) twice;
	# single leaves /proc/stat out and misses only softirq that ran in
	# unrelated tasks.
	single=$(awk -v c="$cs" -v l="$lt" -v k=$((k1 - k0)) -v hz="$hz" 'BEGIN{printf "%.2f", c + l + k/hz}')
	printf '%-9s answered %9d in %ss (%.1f per datagram read), loss %.4f; server CPU %6ss (stat) %6ss (schedstat), whole %6ss (stunload %ss): %8.0f (stat) %8.0f (schedstat) %8.0f (whole) answers per CPU-second\n' \
		"$m" "$answered" "$secs" "$(awk -v a="$answered" -v r="$reads" 'BEGIN{print (r>0)? a/r : 0}')" "$loss" "$cs" "$ns" "$whole" "$lt" "$(awk -v n="$answered" -v c="$cs" 'BEGIN{print (c>0)? n/c : 0}')" \
		"$(awk -v n="$answered" -v c="$ns" 'BEGIN{print (c>0)? n/c : 0}')" "$(awk -v n="$answered" -v c="$whole" 'BEGIN{print (c>0)? n/c : 0}')" >>"$tmp/runs"
	echo "$m $answered $cs $ns $whole" >>"$tmp/totals"
	echo "$r $m $answered $cs $whole $single" >>"$tmp/rounds"
}

for r in $(seq "$rounds"); do
	# the order rotates each round
	k=${#modes[@]}
	for i in $(seq 0 $((k - 1))); do drive "${modes[$(((i + r - 1) % k))]}"; done
done
cat "$tmp/runs"
awk '{a[$1]+=$2; c[$1]+=$3; n[$1]+=$4; w[$1]+=$5; seen[$1]=1}
END {
	for (m in seen) {
		line = sprintf("%-9s %8.0f answers per server CPU-second (schedstat %.0f), %8.0f per whole CPU-second (%d answers, %.2f server CPU-s, %.2f whole CPU-s)",
			m, (c[m]>0)? a[m]/c[m] : 0, (n[m]>0)? a[m]/n[m] : 0, a[m]/w[m], a[m], c[m], w[m])
		if (m != "coturn" && ("coturn" in seen)) {
			# A server that spent under 1 % of the whole (the kernel path)
			# has no meaningful per-server-CPU ratio.
			if (c[m] > 0.01 * w[m]) line = line sprintf(" | vs coturn: server %.2fx", (a[m]/c[m]) / (a["coturn"]/c["coturn"]))
			else line = line " | vs coturn: server (idle)"
			line = line sprintf(" whole %.2fx", (a[m]/w[m]) / (a["coturn"]/w["coturn"]))
		}
		print line
	}
}' "$tmp/totals"
# Medians over the rounds of answers per whole CPU-second and, per round,
# of the ratio to coturn measured in that round (rounds are side by side).
python3 - "$tmp/rounds" <<'PY'
import collections, statistics, sys
per = collections.defaultdict(dict)
for l in open(sys.argv[1]):
    r, m, a, c, w, g = l.split()
    per[m][r] = (int(a), float(c), float(w), float(g))
print("# medians over %d rounds (single: each CPU tick counted once, see drive)" % max(len(v) for v in per.values()))
for m, v in sorted(per.items()):
    whole = statistics.median(a / w for a, c, w, g in v.values() if w > 0)
    single = statistics.median(a / g for a, c, w, g in v.values() if g > 0)
    line = f"{m:9s} median {whole:9.0f} answers per whole CPU-second ({single:.0f} single)"
    if m != "coturn" and "coturn" in per:
        co = per["coturn"]
        rs = [(a / w) / (co[r][0] / co[r][2]) for r, (a, c, w, g) in v.items() if r in co and w > 0]
        gs = [(a / g) / (co[r][0] / co[r][3]) for r, (a, c, w, g) in v.items() if r in co and g > 0]
        line += f" | vs coturn whole: median {statistics.median(rs):.2f}x (rounds {', '.join(f'{x:.2f}' for x in rs)})"
        line += f", single {statistics.median(gs):.2f}x"
    print(line)
PY
