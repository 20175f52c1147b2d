#!/usr/bin/env bash
# SFU benchmark, one run, same synthetic load (pion clients from `traverse load`):
#   traverse on pion's data path (serve --sfu-data-path pion: embedded NATS + signal + sfu, clients join
#   through the bus) vs
#   the same with --sfu-data-path pion-batched ("batched": recvmmsg reads and one sendmmsg writer under
#   pion's mux) vs
#   traverse on its own data path (--sfu-data-path own, the default: "fast" (the name predates issue 16's
#   rename), our own SRTP both ways and one sendmmsg per fan-out; SFUBENCH_FAST_FLAGS adds flags to it) vs
#   Janus 1.1 videoroom (its HTTP API) vs a plain batched Go UDP forwarder (the ceiling).
# For each scenario: server CPU-seconds per million forwarded RTP packets (utime+stime of the
# server process over the measurement window, /proc/PID/stat), packets in and out, loss, memory.
# Usage: bench/sfu-vs-janus.sh [DURATION]   (default 10s; bounded; loopback only)
#   SFUBENCH_SCENARIOS="fanout rooms" (default both) and SFUBENCH_SERVERS="traverse batched fast janus udpfwd"
#   (default all) narrow a run, e.g. SFUBENCH_SCENARIOS=fanout SFUBENCH_SERVERS="traverse udpfwd".
#   Servers run in the order SFUBENCH_SERVERS names them. SFUBENCH_ROUNDS=N (default 1) repeats each scenario
#   N times with fresh servers, rotating the order so each server takes each slot in turn, and prints medians.
#   SFUBENCH_PROFILE=SECONDS takes a CPU profile of the traverse server (serve --pprof) during each run.
#   The load clients join each server's authenticated bus (issue 10) with the signal credentials
#   that server writes to $OUT/creds-{t,b,f} (serve --bus-creds-dir).
#   SFUBENCH_TRAVERSE_BIN=PATH runs the "traverse" server from another build, SFUBENCH_TRAVERSE_FLAGS adds
#   flags to it (e.g. "--sfu-data-path own" to compare two builds' own data paths in one run; builds
#   before issue 16 take --sfu-fast-path instead).
#   At the end it prints each run's UDP receive-buffer drops in the namespace (/proc/net/snmp
#   RcvbufErrors, every socket: server and load clients) and the traverse servers' own-receive-path counters.
#   SFUBENCH_SERVER_ENV="GOMAXPROCS=1" starts the traverse servers and udpfwd's server (not the load clients,
#   not Janus) with that environment, so both sides of the ceiling comparison run alike.
#   SFUBENCH_PIN=1 pins every server (traverse, Janus, udpfwd) to CPU 0 and the load clients to CPU 1
#   (taskset), so that a server never shares its core with the load it is measured under.
#   SFUBENCH_LOAD_FLAGS adds flags to every `traverse load` (traverse's and Janus's runs alike). Since
#   2026-11-22 (load-feedback) the clients send receiver reports, NACKs, transport-cc sequence numbers and
#   feedback as browsers do by default (`traverse load --feedback`, pion's default interceptors);
#   SFUBENCH_LOAD_FLAGS=--feedback=false measures with bare RTP clients as before. The traverse servers' feedback counters
#   (traverse_sfu_feedback_*, subscriber_twcc_feedback_total, subscriber_estimate_bps) are printed
#   with the others. udpfwd has no RTCP at all: it stays the plain forwarding ceiling either way.
set -euo pipefail
cd "$(dirname "$0")/.."
# Everything runs in a network namespace of our own (root needed): no traffic can leave it.
if [ -z "${SFUBENCH_NS:-}" ]; then
  NS=sfubench-$$
  ip netns add "$NS"
  trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
  ip netns exec "$NS" ip link set lo up
  # libnice gathers no loopback address at all: give Janus an interface of the namespace (a veth
  # pair with both ends inside it; its address is local to the namespace).
  ip netns exec "$NS" ip link add sfub0 type veth peer name sfub1
  ip netns exec "$NS" ip addr add 10.77.0.1/24 dev sfub0
  ip netns exec "$NS" ip link set sfub0 up
  ip netns exec "$NS" ip link set sfub1 up
  SFUBENCH_NS=$NS ip netns exec "$NS" "$0" "$@"
  exit $?
fi
DUR=${1:-10s}
LOADF=${SFUBENCH_LOAD_FLAGS:-}
SENV="env ${SFUBENCH_SERVER_ENV:-}"
SPIN= LPIN=
if [ -n "${SFUBENCH_PIN:-}" ]; then SPIN="taskset -c 0" LPIN="taskset -c 1"; SENV="$SPIN $SENV"; fi
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo ?), load flags: '${LOADF}', server env: '${SFUBENCH_SERVER_ENV:-}', pinned: '${SFUBENCH_PIN:-}', load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
SCENARIOS=${SFUBENCH_SCENARIOS:-fanout rooms}
SERVERS=${SFUBENCH_SERVERS:-traverse batched fast janus udpfwd}
ROUNDS=${SFUBENCH_ROUNDS:-1}
want() { [[ " $SERVERS " == *" $1 "* ]]; }
OUT=$(mktemp -d /tmp/sfubench.XXXXXX)
BIN=$OUT/traverse
go build -o "$BIN" ./cmd/traverse
go build -o "$OUT/udpfwd" ./bench/udpfwd
PIDS=()
cleanup() { local pid; for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT

# Fresh servers for every scenario, so memory per participant is measured from a clean start.
start_servers() {
  read -r NATS UDP TCP HTTP P1 P2 P3 P4 P5 P6 ADM NATS2 UDP2 TCP2 HTTP2 Q1 Q2 Q3 Q4 Q5 Q6 ADM2 JPORT FPORT < <(python3 -c '
import socket
ss=[socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(24)]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
  # traverse: serve (embedded NATS, signal, sfu, and the idle other roles) on free ports, pion's data path
  $SENV "${SFUBENCH_TRAVERSE_BIN:-$BIN}" serve --admin 127.0.0.1:$ADM --bus-listen 127.0.0.1:$NATS --bus-creds-dir "$OUT/creds-t" --sfu-udp 127.0.0.1:$UDP --sfu-tcp 127.0.0.1:$TCP --sfu-data-path pion ${SFUBENCH_TRAVERSE_FLAGS:-} \
    --signal-http 127.0.0.1:$HTTP --stun-listen 127.0.0.1:$P1 --stun-other-port $P2 --stun-no-tcp --stun-tls-listen "" \
    --turn-listen 127.0.0.1:$P3 --turn-no-tcp --sipgw-sip 127.0.0.1:$P4 \
    --sipgw-rtp 127.0.0.1:$P5 --sipgw-rtcp 127.0.0.1:$P6 --log-level warn ${SFUBENCH_PROFILE:+--pprof} >>"$OUT/serve.log" 2>&1 &
  TPID=$!; PIDS+=($TPID)
  # the same with the batched socket I/O under pion's mux (--sfu-data-path pion-batched)
  $SENV "$BIN" serve --admin 127.0.0.1:$ADM2 --bus-listen 127.0.0.1:$NATS2 --bus-creds-dir "$OUT/creds-b" --sfu-udp 127.0.0.1:$UDP2 --sfu-tcp 127.0.0.1:$TCP2 --sfu-data-path pion-batched ${SFUBENCH_PROFILE:+--pprof} \
    --signal-http 127.0.0.1:$HTTP2 --stun-listen 127.0.0.1:$Q1 --stun-other-port $Q2 --stun-no-tcp --stun-tls-listen "" \
    --turn-listen 127.0.0.1:$Q3 --turn-no-tcp --sipgw-sip 127.0.0.1:$Q4 \
    --sipgw-rtp 127.0.0.1:$Q5 --sipgw-rtcp 127.0.0.1:$Q6 --log-level warn >>"$OUT/serve-batched.log" 2>&1 &
  TPID2=$!; PIDS+=($TPID2)
  # the same on the own data path (--sfu-data-path own), only when wanted
  if want fast; then
    read -r NATS3 UDP3 TCP3 HTTP3 R1 R2 R3 R4 R5 R6 ADM3 < <(python3 -c '
import socket
ss=[socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(11)]
for s in ss: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
    $SENV "$BIN" serve --admin 127.0.0.1:$ADM3 --bus-listen 127.0.0.1:$NATS3 --bus-creds-dir "$OUT/creds-f" --sfu-udp 127.0.0.1:$UDP3 --sfu-tcp 127.0.0.1:$TCP3 \
      --sfu-data-path own ${SFUBENCH_FAST_FLAGS:-} ${SFUBENCH_PROFILE:+--pprof} \
      --signal-http 127.0.0.1:$HTTP3 --stun-listen 127.0.0.1:$R1 --stun-other-port $R2 --stun-no-tcp --stun-tls-listen "" \
      --turn-listen 127.0.0.1:$R3 --turn-no-tcp --sipgw-sip 127.0.0.1:$R4 \
      --sipgw-rtp 127.0.0.1:$R5 --sipgw-rtcp 127.0.0.1:$R6 --log-level warn >>"$OUT/serve-fast.log" 2>&1 &
    TPID3=$!; PIDS+=($TPID3)
  fi
  # Janus: Debian's config, HTTP on a free port bound to loopback, unused plugins and transports off
  JDIR=$OUT/janus; rm -rf "$JDIR"; mkdir -p "$JDIR"; cp /etc/janus/*.jcfg "$JDIR/"
  sed -i "s|^\tport = 8088.*|\tport = $JPORT|; s|^\t#ip = \"192.168.0.1\".*|\tip = \"127.0.0.1\"|" "$JDIR/janus.transport.http.jcfg"
  sed -i 's|^\t#disable = "libjanus_rabbitmq.so"|\tdisable = "libjanus_websockets.so,libjanus_rabbitmq.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so"|' "$JDIR/janus.jcfg"
  sed -i 's|^\t#disable = "libjanus_voicemail.so,libjanus_recordplay.so"|\tdisable = "libjanus_lua.so,libjanus_duktape.so,libjanus_voicemail.so,libjanus_recordplay.so,libjanus_audiobridge.so,libjanus_streaming.so,libjanus_sip.so,libjanus_nosip.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_echotest.so"|' "$JDIR/janus.jcfg"
  $SPIN janus -C "$JDIR/janus.jcfg" -F "$JDIR" -N -o -r 30000-39999 -E sfub0 -L "$OUT/janus.log" >/dev/null 2>&1 &
  JPID=$!; PIDS+=($JPID)
  # the ceiling
  $SENV "$OUT/udpfwd" -mode server -listen 127.0.0.1:$FPORT &
  FPID=$!; PIDS+=($FPID)
  for i in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$JPORT/janus/info" && (exec 3<>/dev/tcp/127.0.0.1/$NATS) 2>/dev/null \
      && (exec 3<>/dev/tcp/127.0.0.1/$NATS2) 2>/dev/null \
      && { ! want fast || (exec 3<>/dev/tcp/127.0.0.1/$NATS3) 2>/dev/null; } && break
    sleep 0.2
  done
}

# run_one SERVER NAME ROUNDTAG: one server under the scenario's load (the servers are all up, idle but
# for the one under load).
# udp_rcvbuf_errors: the namespace's UDP receive-buffer drops so far (every socket: server and clients).
udp_rcvbuf_errors() { awk '/^Udp:/ { getline; print $6; exit }' /proc/net/snmp; }

run_one() {
  local srv=$1 name=$2 tag=$3 adm="" pid="" rcv0
  rcv0=$(udp_rcvbuf_errors)
  case $srv in
    traverse) adm=$ADM; pid=$TPID; nats=$NATS; prefix=t ;;
    batched) adm=$ADM2; pid=$TPID2; nats=$NATS2; prefix=b ;;
    fast) adm=$ADM3; pid=$TPID3; nats=$NATS3; prefix=f ;;
  esac
  case $srv in
    traverse|batched|fast)
      if [ -n "${SFUBENCH_PROFILE:-}" ]; then
        (sleep 6; curl -s -o "$OUT/$srv-$tag.pprof" "http://127.0.0.1:$adm/debug/pprof/profile?seconds=$SFUBENCH_PROFILE") &
        PROF=$!
      fi
      $LPIN "$BIN" load --nats nats://127.0.0.1:$nats --nats-creds "$OUT/creds-$prefix/signal.creds" --rooms $r --publishers $p --subscribers $s --duration $DUR \
        --server-pid $pid --room-prefix "$prefix$tag" $LOADF --json 2>"$OUT/$srv-$tag.err" >"$OUT/$srv-$tag.json" || true
      [ -n "${PROF:-}" ] && { wait "$PROF" 2>/dev/null || true; PROF=; }
      [ "$srv" = traverse ] || curl -s "http://127.0.0.1:$adm/metrics" | grep -E '^traverse_sfu_(udp_|rtp_forwarded|rtp_received|fast_path|fast_receive|fast_rtcp|feedback_|subscriber_twcc|subscriber_estimate_bps_(count|sum)|subscriber_loss_fraction_count)' >"$OUT/$srv-$tag-metrics.txt" || true
      ;;
    janus)
      $LPIN "$BIN" load --janus "http://127.0.0.1:$JPORT/janus" --ice-ip 10.77.0.1 --rooms $r --publishers $p --subscribers $s --duration $DUR \
        --server-pid $JPID --room-prefix "j$tag" $LOADF --json 2>"$OUT/janus-$tag.err" >"$OUT/janus-$tag.json" || true
      ;;
    udpfwd)
      $LPIN "$OUT/udpfwd" -mode load -server 127.0.0.1:$FPORT -server-pid $FPID -rooms $r -publishers $p -subscribers $s \
        -duration $DUR >"$OUT/udpfwd-$tag.json" || true
      ;;
  esac
  echo "$srv $tag: UDP receive-buffer drops in the namespace during the run: $(( $(udp_rcvbuf_errors) - rcv0 ))" >>"$OUT/rcvbuf.txt"
}

run() { # name rooms pubs subs
  local name=$1 r=$2 p=$3 s=$4 round order=($SERVERS)
  for round in $(seq "$ROUNDS"); do
    echo "== $name, round $round: $r room(s) x ($p publishers + $s subscribers), $DUR, order: ${order[*]}" >&2
    start_servers
    for srv in "${order[@]}"; do
      run_one "$srv" "$name" "$name-$round"
    done
    cleanup
    # The next round starts with the server after this round's first: each takes each slot in turn.
    order=("${order[@]:1}" "${order[0]}")
  done
}
for sc in $SCENARIOS; do
  case $sc in
    fanout) run fanout 1 1 50 ;;
    rooms) run rooms 10 4 0 ;;
  esac
done
cat "$OUT"/*-metrics.txt >&2 2>/dev/null || true
cat "$OUT/rcvbuf.txt" >&2 2>/dev/null || true

python3 - "$OUT" "$ROUNDS" $SERVERS <<'PY'
import json, sys, os, statistics
out, rounds, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print(f"{'scenario':8} {'server':9} {'round':>5} {'pub pkt/s':>9} {'out pkt/s':>9} {'expected':>9} {'loss %':>7} {'CPU %':>6} {'CPU-s/Mpkt':>10} {'pkt/CPU-s':>9} {'KiB/peer':>8}")
medians = {}
for sc in ("fanout", "rooms"):
    for srv in servers:
        costs = []
        for rd in range(1, rounds + 1):
            f = os.path.join(out, f"{srv}-{sc}-{rd}.json")
            if not os.path.exists(f):
                continue
            try:
                d = json.load(open(f))
            except Exception as e:
                print(sc, srv, rd, "failed:", e); continue
            cpu = d.get("server_cpu_seconds", 0) / max(d.get("seconds", 1), 1e-9) * 100
            c = d.get("cpu_seconds_per_million_packets", 0)
            if c > 0:
                costs.append(c)
            print(f"{sc:8} {srv:9} {rd:5} {d.get('published_packets_per_second',0):9.0f} {d.get('packets_per_second',0):9.0f} "
                  f"{d.get('expected_packets_per_second',0):9.0f} {100*d.get('loss_fraction',0):7.2f} {cpu:6.1f} "
                  f"{c:10.1f} {d.get('packets_per_cpu_second',0):9.0f} "
                  f"{d.get('memory_per_peer_kib',0):8.0f}")
        if costs:
            medians[(sc, srv)] = statistics.median(costs)
if rounds > 1 and medians:
    print("medians of CPU-s per million forwarded packets (each server took each slot in turn):")
    for (sc, srv), m in medians.items():
        extra = ""
        if srv != "udpfwd" and (sc, "udpfwd") in medians:
            extra += f"  share of udpfwd {100*medians[(sc,'udpfwd')]/m:.0f} %"
        if srv not in ("janus", "udpfwd") and (sc, "janus") in medians:
            extra += f"  {medians[(sc,'janus')]/m:.1f}x cheaper than janus"
        print(f"  {sc:8} {srv:9} {m:6.1f}{extra}")
PY
echo "raw results in $OUT" >&2
