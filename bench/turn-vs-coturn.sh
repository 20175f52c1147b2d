#!/usr/bin/env bash
# Side-by-side TURN relay benchmark: traverse turn vs coturn's turnserver on
# loopback, both driven by the same coturn turnutils_uclient load, one after
# the other in one run. Reports each server's CPU (utime+stime from
# /proc/PID/stat) per relayed packet, the loss, and the ratio.
#
# Usage: bench/turn-vs-coturn.sh [CLIENTS] [MSGS] [INTERVAL_MS] [LEN]
#   defaults: 20 clients, 1000 messages each, 5 ms apart, 172 bytes.
#   UCLIENT_FLAGS="-t" runs the clients over TCP, "-t -S" over TLS (both
#   servers get a TLS listener with a self-signed certificate); TRAVERSE_FLAGS adds flags
#   to traverse turn; TRAVERSE_BIN runs that traverse binary instead of building one (for
#   A/B runs of two builds). ROUNDS=N (default 1) runs N rounds, alternating which
#   server goes first, and reports each round's ratio and their median.
# Each delivered message is relayed twice by the server (to the peer and
# back), so relayed packets = sent + received. The ratio counts the
# servers' CPU only, the same way for both; a second line adds the load
# generators' CPU (turnutils_uclient and turnutils_peer, from their own
# rusage and /proc) to each server's, so that a server which merely moves
# work onto the clients (more wake-ups, smaller reads) shows it there.
set -euo pipefail
clients=${1:-20}; msgs=${2:-1000}; interval=${3:-5}; len=${4:-172}
cd "$(dirname "$0")/.."
. bench/lib/coturn.sh
for b in turnserver turnutils_uclient turnutils_peer; do
  command -v $b >/dev/null || { echo "missing $b (apt-get install coturn)"; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { # first free UDP+TCP port from $1
  local p=$1
  while ss -Hlnu "sport = :$p" | grep -q . || ss -Hlnt "sport = :$p" | grep -q .; do p=$((p+1)); done
  echo $p
}
tport=$(free_port 35478); cport=$(free_port $((tport+1))); pport=$(free_port $((cport+1)))
tls=no; case " ${UCLIENT_FLAGS:-} " in *" -S "*) tls=yes ;; esac
if [ $tls = yes ]; then
  ttls=$(free_port $((pport+2))); ctls=$(free_port $((ttls+1))) # uclient also uses the peer port + 1
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=bench -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1
fi
hz=$(getconf CLK_TCK)
cpu() { awk -v hz="$hz" '{printf "%.3f", ($14+$15)/hz}' /proc/$1/stat; }
wait_port() { for _ in $(seq 100); do ss -Hlnu "sport = :$1" | grep -q . && return 0; sleep 0.05; done; echo "port $1 never opened"; exit 1; }

if [ -n "${TRAVERSE_BIN:-}" ]; then cp "$TRAVERSE_BIN" "$work/traverse"; else go build -o "$work/traverse" ./cmd/traverse; fi

coturn_relay_conf "$work" "$cport" "$( [ $tls = yes ] && printf 'cert=%s\npkey=%s\ntls-listening-port=%s\n' "$work/cert.pem" "$work/key.pem" "$ctls" || echo no-tls )"

turnutils_peer -L 127.0.0.1 -p "$pport" >/dev/null 2>&1 & ppid=$!; pids+=($ppid)
"$work/traverse" turn --listen 127.0.0.1:$tport --realm bench --user bench:bench \
  --allow-loopback-peers --relay-ports 53000-53999 --log-level warn \
  $( [ $tls = yes ] && echo "--tls-listen 127.0.0.1:$ttls --tls-cert $work/cert.pem --tls-key $work/key.pem --no-dtls" ) \
  ${TRAVERSE_FLAGS:-} 2>"$work/traverse.log" & tpid=$!; pids+=($tpid)
turnserver -c "$work/coturn.conf" >/dev/null 2>&1 & cpid=$!; pids+=($cpid)
wait_port $tport; wait_port $cport; wait_port $pport
if [ $tls = yes ]; then tport=$ttls; cport=$ctls; fi # the clients go to the TLS ports

run() { # name pid port
  local name=$1 pid=$2 port=$3 c0 c1 p0 p1 out sent recv lost ucpu
  c0=$(cpu "$pid"); p0=$(cpu "$ppid")
  out=$(/usr/bin/time -f 'uclient-cpu %U %S' turnutils_uclient ${UCLIENT_FLAGS:-} -u bench -w bench -p "$port" -m "$clients" -n "$msgs" -z "$interval" -l "$len" \
        -e 127.0.0.1 -r "$pport" 127.0.0.1 2>&1)
  c1=$(cpu "$pid"); p1=$(cpu "$ppid")
  ucpu=$(awk '/^uclient-cpu/ {printf "%.3f", $2+$3}' <<<"$out")
  sent=$(grep -o 'tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | grep -o '[0-9]*' | head -1)
  recv=$(grep -o 'tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | grep -o '[0-9]*' | tail -1)
  lost=$(grep -o 'Total lost packets [0-9]*' <<<"$out" | grep -o '[0-9]*$')
  awk -v n="$name" -v c0="$c0" -v c1="$c1" -v s="$sent" -v r="$recv" -v l="$lost" 'BEGIN {
    cpu = c1 - c0; pk = s + r;
    printf "%-9s sent %6d recv %6d lost %5d (%.2f%%)  cpu %6.2f s  %6.2f us/relayed packet  %8.0f packets/cpu-s\n",
      n, s, r, l, 100*l/(s>0?s:1), cpu, (pk>0? 1e6*cpu/pk : 0), (cpu>0? pk/cpu : 0) }'
  echo "$name $c0 $c1 $sent $recv $(awk -v a="$p0" -v b="$p1" -v u="${ucpu:-0}" 'BEGIN {printf "%.3f", b-a+u}')" > "$work/results.$name"
}
ratio() {
  cat "$work/results.traverse" "$work/results.coturn" | awk '{cpu[$1]=$3-$2; pk[$1]=$4+$5} END {
    t = cpu["traverse"]/pk["traverse"]; c = cpu["coturn"]/pk["coturn"]; printf "%.2f\n", c/t }'
}
withload() { # the ratio with the load generators' CPU added to each server's
  cat "$work/results.traverse" "$work/results.coturn" | awk '{cpu[$1]=$3-$2+$6; pk[$1]=$4+$5; l[$1]=$6} END {
    t = cpu["traverse"]/pk["traverse"]; c = cpu["coturn"]/pk["coturn"];
    printf "%.2fx (load generators %.2f s beside traverse, %.2f s beside coturn)\n", c/t, l["traverse"], l["coturn"] }'
}

echo "load: $clients clients x $msgs messages of $len bytes, ${interval} ms apart (turnutils_uclient ${UCLIENT_FLAGS:-UDP})"
rounds=${ROUNDS:-1}
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then run traverse "$tpid" "$tport"; run coturn "$cpid" "$cport"
  else run coturn "$cpid" "$cport"; run traverse "$tpid" "$tport"; fi
  x=$(ratio); echo "$x" >> "$work/ratios"
  echo "ratio: traverse relays ${x}x the packets per CPU-second of coturn"
  w=$(withload); echo "${w%%x*}" >> "$work/wratios"
  echo "with the load generators' CPU: $w"
done
if [ "$rounds" -gt 1 ]; then
  sort -n "$work/ratios" | awk '{v[NR]=$1} END {m = NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2;
    printf "median ratio over %d rounds: %.2fx (min %.2fx, max %.2fx)\n", NR, m, v[1], v[NR]}'
  sort -n "$work/wratios" | awk '{v[NR]=$1} END {m = NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2;
    printf "median with the load generators'"'"' CPU: %.2fx (min %.2fx, max %.2fx)\n", m, v[1], v[NR]}'
fi
