#!/usr/bin/env bash
# RTP forwarding cost of the SIP border gateway's media proxy against
# rtpengine (user space), side by side in one run, and of traverse's two
# kernel paths (nftables rules and the eBPF tc program), all at the same
# offered load.
#
#   sudo bench/sipgw-vs-rtpengine.sh [CALLS] [SECONDS] [PPS] [ROUNDS]
#
# Three network namespaces: client 10.1.0.2 -- 10.1.0.1 gateway 10.2.0.1
# -- 10.2.0.2 server (veth pairs, the gateway forwards IPv4). The load
# driver (bench/sipgwload) opens one client socket and one server socket
# per call and sends PPS packets per second per call in each direction
# (172-byte RTP, default 500 calls x 50 pps each way). Five runs:
#   direct     no proxy: the gateway namespace only routes (baseline)
#   traverse   traverse sipgw, media proxy in user space (--offload off)
#   rtpengine  rtpengine 10.5, user space (--table=-1), driven over ng
#   kernel     traverse sipgw --offload nftables (flows move to nftables
#              after 50 packets each way, during the warm-up)
#   ebpf       traverse sipgw --offload ebpf (flows move into the tc/TCX
#              program of internal/kfast/mediaflow the same way)
# Each run: 3 s warm-up, then SECONDS (default 10) measured. Reported per
# million forwarded packets: the proxy process's utime+stime
# (/proc/PID/stat), and the whole machine's busy CPU (/proc/stat: user,
# nice, system, irq, softirq) which also counts the driver, the kernel's
# forwarding and anything else running on the machine. ROUNDS (default 1)
# repeats the five runs; the summary takes each figure's median per run kind,
# and the median over rounds of each run's attributable CPU minus the same
# round's direct run (paired: the machine's other load changes between
# rounds more than between neighbouring runs). MODES (default "direct
# traverse rtpengine kernel ebpf") picks the runs, e.g.
#   MODES="direct traverse ebpf" bench/sipgw-vs-rtpengine.sh 200 8 50 8
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-500}
secs=${2:-10}
pps=${3:-50}
rounds=${4:-1}
modes=${MODES:-direct traverse rtpengine kernel ebpf}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, nftables)"; exit 1; }
case " $modes " in *" rtpengine "*)
	command -v rtpengine >/dev/null || { echo "rtpengine not installed (Debian package rtpengine-daemon)"; exit 1; } ;;
esac

tag=sgwb$$
c=$tag-c g=$tag-g s=$tag-s
tmp=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	for n in $c $g $s; do ip netns del "$n" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT

for n in $c $g $s; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n $g link add out0 type veth peer name out1 netns $c
ip -n $g link add in0 type veth peer name in1 netns $s
ip -n $g addr add 10.1.0.1/24 dev out0; ip -n $g link set out0 up
ip -n $g addr add 10.2.0.1/24 dev in0; ip -n $g link set in0 up
ip -n $c addr add 10.1.0.2/24 dev out1; ip -n $c link set out1 up; ip -n $c route add default via 10.1.0.1
ip -n $s addr add 10.2.0.2/24 dev in1; ip -n $s link set in1 up; ip -n $s route add default via 10.2.0.1
ip netns exec $g sysctl -qw net.ipv4.ip_forward=1

go build -o "$tmp/traverse" ./cmd/traverse
go build -o "$tmp/sipgwload" ./bench/sipgwload

wait_udp() { # NS PORT
	for i in $(seq 300); do
		ss -N "$1" -Hlun "sport = :$2" | grep -q . && return 0
		sleep 0.05
	done
	echo "nothing listens on $1 udp/$2"; cat "$tmp/rtpengine.log" 2>/dev/null | tail -5; exit 1
}

load() { # MODE PID
	"$tmp/sipgwload" -mode "$1" -pid "$2" -gw-ns $g -client-ns $c -server-ns $s \
		-calls "$calls" -pps "$pps" -duration "${secs}s" -warmup 3s
}

results=()
traverse_run() { # OFFLOAD MODE-LABEL
	ip netns exec $g "$tmp/traverse" sipgw --sip 10.1.0.1:5060 --rtp 10.1.0.1:7000 --rtcp 10.1.0.1:7001 \
		--upstream 10.2.0.2:5080 --inside-ip 10.2.0.1 --inside-ports 30000-39999 --admin 127.0.0.1:19561 \
		--control 127.0.0.1:7722 --allow-media 10.1.0.0/24 --offload "$1" --log-level warn &
	local pid=$!
	pids+=("$pid")
	wait_udp $g 7722
	local r
	r=$(load traverse "$pid")
	results+=("${r/\"mode\":\"traverse\"/\"mode\":\"$2\"}")
	# The proxy's own drop counters: loss inside traverse shows here.
	ip netns exec $g curl -s 127.0.0.1:19561/metrics | grep -E '^traverse_mediaproxy_drops_total' | grep -v ' 0$' | sed "s/^/$2: /" >&2 || true
	kill "$pid"; wait "$pid" 2>/dev/null || true
}
rtpengine_run() {
	ip netns exec $g rtpengine --config-file=none --table=-1 --interface=10.1.0.1 --listen-ng=127.0.0.1:2223 \
		--foreground --log-stderr --log-level=3 --port-min=20000 --port-max=29999 --delete-delay=0 2>"$tmp/rtpengine.log" &
	local rpid=$!
	pids+=("$rpid")
	wait_udp $g 2223
	results+=("$(load rtpengine "$rpid")")
	kill "$rpid"; wait "$rpid" 2>/dev/null || true
}
for round in $(seq "$rounds"); do
	for m in $modes; do
		case $m in
		direct) results+=("$(load direct 0)") ;;
		traverse) traverse_run off traverse ;;
		rtpengine) rtpengine_run ;;
		kernel) traverse_run nftables kernel ;;
		ebpf) traverse_run ebpf ebpf ;;
		*) echo "unknown mode $m in MODES"; exit 1 ;;
		esac
	done
done

printf '%s\n' "${results[@]}" >"$tmp/results.json"
cat "$tmp/results.json"
python3 - "$tmp/results.json" <<'PY'
import json, sys
import statistics
runs, order = {}, []
for r in map(json.loads, open(sys.argv[1])):
    runs.setdefault(r["mode"], []).append(r)
    if r["mode"] not in order:
        order.append(r["mode"])
# Per kind of run, the median of each per-packet figure over the rounds.
keys = ["proxy_cpu_s", "proxy_user_s", "driver_cpu_s", "machine_softirq_s", "machine_busy_s"]
rs = {}
for m, l in runs.items():
    r = dict(l[0])
    for k in keys:
        r[k] = statistics.median(x[k] / x["forwarded"] for x in l) * r["forwarded"]
    r["forwarded"] = int(statistics.median(x["forwarded"] for x in l))
    r["expected"] = l[0]["expected"]
    rs[m] = r
print(f"rounds: {max(len(l) for l in runs.values())} (medians)")
per = lambda r, k: r[k] / (r["forwarded"] / 1e6)
# attributable: the proxy process + the load driver + softirq time. This
# kernel has no IRQ time accounting, so forwarding done in softirq is
# charged either to the task that was running (driver or proxy) or to the
# softirq column; summing the three counts it once, and leaves out the
# other processes sharing the machine (their softirq aside).
attr = lambda r: per(r, "proxy_cpu_s") + per(r, "driver_cpu_s") + per(r, "machine_softirq_s")
print()
print(f"{'run':10} {'forwarded':>10} {'of expected':>11} {'proxy':>8} {'user':>8} {'driver':>8} {'softirq':>8} {'attrib.':>8} {'machine':>8} {'offloaded':>9}   (CPU-s per million forwarded packets)")
for m in order:
    r = rs[m]
    print(f"{m:10} {r['forwarded']:>10} {r['forwarded']/r['expected']:>10.1%} {per(r,'proxy_cpu_s'):>8.2f} {per(r,'proxy_user_s'):>8.2f} {per(r,'driver_cpu_s'):>8.2f} {per(r,'machine_softirq_s'):>8.2f} {attr(r):>8.2f} {per(r,'machine_busy_s'):>8.2f} {r['offloaded_calls']:>9}")
print()
if "rtpengine" in rs and "traverse" in rs:
    t, e = rs["traverse"], rs["rtpengine"]
    print(f"user space, proxy process CPU: rtpengine / traverse = {per(e,'proxy_cpu_s')/per(t,'proxy_cpu_s'):.2f}x (goal >= 1.5x)")
if "direct" not in rs:
    sys.exit(0)
# Paired excess: each run's attributable CPU minus its own round's direct
# run, median over the rounds.
ex = {}
for m in order:
    if m == "direct":
        continue
    diffs = [attr(x) - attr(d) for x, d in zip(runs[m], runs["direct"])]
    ex[m] = statistics.median(diffs)
    print(f"{m:10} attributable CPU above the same round's routing-only run: median {ex[m]:6.2f} CPU-s/Mpkt (per round: {', '.join(f'{v:.2f}' for v in diffs)})")
names = {"kernel": "nftables kernel path", "ebpf": "eBPF kernel path"}
if "traverse" in ex:
    for m in ["kernel", "ebpf"]:
        if m not in ex:
            continue
        if ex[m] > 0:
            print(f"{names[m]} vs traverse user space: {ex['traverse']/ex[m]:.1f}x cheaper (goal >= 5x)")
        else:
            print(f"{names[m]}: at or below the routing-only baseline (nothing measurable above it)")
        print(f"{names[m]}, proxy process alone: {per(rs[m],'proxy_cpu_s'):.3f} CPU-s/Mpkt vs {per(rs['traverse'],'proxy_cpu_s'):.2f} in user space")
PY
