#!/usr/bin/env bash
# deploy/local-cluster.sh up|down|status
#
# Brings up the whole multi-node topology of traverse as plain processes on
# this machine, all on loopback with free ports: three bus (NATS) nodes
# clustered with routes and JetStream, two signal servers, three SFU nodes,
# two controllers (when the binary has the controller command), STUN and
# TURN. Logs, pids, credentials and the JetStream stores live in one state
# directory; "down" stops only the processes whose pids it wrote there.
#
# Environment:
#   CLUSTER_DIR   state directory (default ${TMPDIR:-/tmp}/traverse-local-cluster)
#   CLUSTER_BIN   the traverse binary (default: traverse on PATH)
#   CLUSTER_WAIT  seconds to wait for each process's /readyz (default 20)
#   CLUSTER_BUS_NODES  1 or 3 bus nodes (default 3; 1 is a lone server)
#   CLUSTER_SIGNALS    signal servers (default 2)
#   CLUSTER_EXTRAS     0 leaves out STUN, TURN and the controllers (default 1)
#   CLUSTER_SIGNAL_ARGS, CLUSTER_SFU_ARGS  more flags for every signal / SFU
#                      process (word-split), e.g. "--max-conns-per-addr 5000"
#
# After "up", $CLUSTER_DIR/endpoints.env lists what was started (shell
# syntax: SIGNAL_URLS, NATS_URLS, ...), for example:
#   . /tmp/traverse-local-cluster/endpoints.env
#   traverse load --url "${SIGNAL_WS%% *}" --rooms 4 --publishers 4 --subscribers 0 --video-bitrate -1
set -euo pipefail

DIR=${CLUSTER_DIR:-${TMPDIR:-/tmp}/traverse-local-cluster}
BIN=${CLUSTER_BIN:-$(command -v traverse || true)}
WAIT=${CLUSTER_WAIT:-20}
NODES=(n1 n2 n3)
BUSES=${CLUSTER_BUS_NODES:-3}
SIGNALS=${CLUSTER_SIGNALS:-2}
EXTRAS=${CLUSTER_EXTRAS:-1}
[[ $BUSES == 1 || $BUSES == 3 ]] || { echo "local-cluster: CLUSTER_BUS_NODES is 1 or 3" >&2; exit 2; }

UPPING=0
die() {
	echo "local-cluster: $*" >&2
	if ((UPPING)); then
		UPPING=0
		echo "local-cluster: up failed; stopping what started" >&2
		down >&2
	fi
	exit 1
}

# used_ports prints every TCP and UDP port bound on this machine.
used_ports() {
	if command -v ss >/dev/null; then
		ss -Htuan 2>/dev/null | awk '{n=split($5,a,":"); print a[n]}'
	fi
}

# pick_ports N prints N distinct ports free for both TCP and UDP now.
pick_ports() {
	local want=$1 used p got=0
	used=" $(used_ports | sort -u | tr '\n' ' ') $(cat "$DIR"/ports 2>/dev/null | tr '\n' ' ') "
	p=$((20000 + RANDOM % 30000))
	while ((got < want)); do
		p=$((p + 1))
		((p > 60000)) && p=20000
		[[ $used == *" $p "* ]] && continue
		if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
		echo "$p" | tee -a "$DIR/ports"
		got=$((got + 1))
	done
}

# http_status HOST:PORT PATH prints the HTTP status of GET PATH (000 when
# nothing answers).
http_status() {
	local host=${1%:*} port=${1##*:} line
	if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
		echo 000
		return
	fi
	printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$1" >&3
	read -r -t 5 line <&3 || line=""
	exec 3<&- 3>&-
	line=${line#HTTP/* }
	echo "${line%% *}" | tr -d '\r' | grep -E '^[0-9]{3}$' || echo 000
}

# starttime PID prints the start time of process PID (field 22 of
# /proc/PID/stat, after the command name in parentheses).
starttime() {
	local stat
	stat=$(cat /proc/"$1"/stat 2>/dev/null) || return 1
	stat=${stat##*) }
	set -- $stat
	echo "${20}"
}

# ours PIDFILE: the process the pid file names is alive and is the one we
# started (same start time as recorded), so a recycled pid is never touched.
ours() {
	local pid start now
	read -r pid start <"$1" || return 1
	now=$(starttime "$pid") || return 1
	[[ $now == "$start" ]]
}

# start NAME ARGS...: starts "$BIN ARGS --admin ADDR" in the background,
# records its pid and admin address, waits for /readyz.
start() {
	local name=$1 admin port pid i
	shift
	port=$(pick_ports 1)
	admin=127.0.0.1:$port
	"$BIN" "$@" --admin "$admin" --log-level "${CLUSTER_LOG_LEVEL:-info}" </dev/null >>"$DIR/logs/$name.log" 2>&1 &
	pid=$!
	echo "$pid $(starttime "$pid")" >"$DIR/pids/$name.pid"
	echo "$admin" >"$DIR/admin/$name"
	for ((i = 0; i < WAIT * 10; i++)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 20 "$DIR/logs/$name.log" >&2
			die "$name exited during start (log: $DIR/logs/$name.log)"
		fi
		[[ $(http_status "$admin" /readyz) == 200 ]] && return 0
		sleep 0.1
	done
	tail -n 20 "$DIR/logs/$name.log" >&2
	die "$name not ready within ${WAIT}s (log: $DIR/logs/$name.log)"
}

up() {
	[[ -x $BIN ]] || die "no traverse binary: set CLUSTER_BIN or put traverse on PATH"
	if ls "$DIR"/pids/*.pid >/dev/null 2>&1; then
		die "$DIR already holds a cluster: run down first"
	fi
	mkdir -p "$DIR"/{logs,pids,admin,creds,js}
	chmod 700 "$DIR" "$DIR/creds"
	: >"$DIR/ports"
	UPPING=1
	trap 'die "a command failed (line $LINENO)"' ERR

	# Three bus nodes: client port and route port each, routes to the
	# others, one credentials directory (the first node writes it, with the
	# cluster secret), JetStream for the controller's buckets.
	local -a client route
	read -r -d '' -a client < <(pick_ports 3) || true
	read -r -d '' -a route < <(pick_ports 3) || true
	local nats="" i j routes nodeargs=() last=$((BUSES - 1))
	for n in "${NODES[@]}"; do nodeargs+=(--node "$n"); done
	for ((i = 0; i <= last; i++)); do nats+="${nats:+,}nats://127.0.0.1:${client[i]}"; done
	for ((i = 0; i <= last; i++)); do
		local cluster=()
		if ((BUSES > 1)); then
			routes=""
			for ((j = 0; j <= last; j++)); do ((i == j)) || routes+="${routes:+,}nats://127.0.0.1:${route[j]}"; done
			cluster=(--cluster-listen "127.0.0.1:${route[i]}" --routes "$routes")
		fi
		start "bus-$((i + 1))" bus --listen "127.0.0.1:${client[i]}" "${cluster[@]}" --server-name "bus-$((i + 1))" \
			--creds-dir "$DIR/creds" "${nodeargs[@]}" --jetstream-dir "$DIR/js/bus-$((i + 1))" --max-conns 4096
	done

	# STUN and TURN (TURN with a REST secret made here).
	local stun="" turn="" secret ice=()
	if ((EXTRAS)); then
		stun=$(pick_ports 1)
		turn=$(pick_ports 1)
		if [[ ! -s $DIR/creds/turn.secret ]]; then
			(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/creds/turn.secret")
		fi
		secret=$(cat "$DIR/creds/turn.secret")
		start stun stun --listen "127.0.0.1:$stun" --no-tcp
		start turn turn --listen "127.0.0.1:$turn" --realm local --auth-secret "$secret" --relay-ip 127.0.0.1 \
			--allow-loopback-peers --no-tcp --no-dtls
		ice=(--ice-url "stun:127.0.0.1:$stun")
	fi

	# Three SFU nodes, one UDP port each.
	local sfus=""
	for n in "${NODES[@]}"; do
		local p
		p=$(pick_ports 1)
		# shellcheck disable=SC2086 # word-split on purpose
		start "sfu-$n" sfu --udp "127.0.0.1:$p" --tcp "" --nats "$nats" --nats-creds "$DIR/creds/sfu-$n.creds" --region local \
			${CLUSTER_SFU_ARGS:-}
		sfus+="${sfus:+ }$n=127.0.0.1:$p"
	done

	# Two controllers when the binary has the command.
	local ctls=0
	if ((EXTRAS)) && "$BIN" controller --help >/dev/null 2>&1; then
		for i in 1 2; do
			start "controller-$i" controller --nats "$nats" --nats-creds "$DIR/creds/controller.creds" --id "controller-$i"
		done
		ctls=2
	elif ((EXTRAS)); then
		echo "local-cluster: $BIN has no controller command; starting none" >&2
	fi

	# Two signal servers sharing one token key.
	if [[ ! -s $DIR/creds/token.key ]]; then
		(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/creds/token.key")
	fi
	local key http=() ws="" sig=""
	key=$(cat "$DIR/creds/token.key")
	for ((i = 1; i <= SIGNALS; i++)); do
		local p
		p=$(pick_ports 1)
		# shellcheck disable=SC2086 # word-split on purpose
		start "signal-$i" signal --http "127.0.0.1:$p" --nats "$nats" --nats-creds "$DIR/creds/signal.creds" \
			--token-key "$key" --demo-tokens --region local "${ice[@]}" ${CLUSTER_SIGNAL_ARGS:-}
		http+=("http://127.0.0.1:$p")
		ws+="${ws:+ }ws://127.0.0.1:$p/ws"
		sig+="${sig:+ }http://127.0.0.1:$p"
	done
	trap - ERR

	{
		echo "# written by deploy/local-cluster.sh up at $(date -u +%FT%TZ)"
		echo "NATS_URLS='$nats'"
		echo "SIGNAL_URLS='$sig'"
		echo "SIGNAL_WS='$ws'"
		echo "SFU_NODES='$sfus'"
		echo "STUN='${stun:+127.0.0.1:$stun}'"
		echo "TURN='${turn:+127.0.0.1:$turn}'"
		echo "CONTROLLERS=$ctls"
		echo "TOKEN_KEY_FILE='$DIR/creds/token.key'"
		echo "TURN_SECRET_FILE='$DIR/creds/turn.secret'"
		echo "SIGNAL_CREDS='$DIR/creds/signal.creds'"
		for f in "$DIR"/admin/*; do
			local n=${f##*/}
			echo "ADMIN_${n//-/_}='$(cat "$f")'"
		done
	} >"$DIR/endpoints.env"
	echo "local-cluster: up in $DIR ($BUSES bus, 3 sfu, $SIGNALS signal, $ctls controllers$( ((EXTRAS)) && echo ", stun, turn"))"
	echo "  signal: $sig"
	echo "  nats:   $nats"
}

down() {
	local f pid name i left
	shopt -s nullglob
	local files=("$DIR"/pids/*.pid)
	for f in "${files[@]}"; do
		read -r pid _ <"$f"
		if ours "$f"; then kill -TERM "$pid" 2>/dev/null || true; fi
	done
	for ((i = 0; i < 100; i++)); do
		left=0
		for f in "${files[@]}"; do
			ours "$f" && left=1
		done
		((left)) || break
		sleep 0.1
	done
	for f in "${files[@]}"; do
		read -r pid _ <"$f"
		name=${f##*/}
		if ours "$f"; then
			echo "local-cluster: ${name%.pid} ($pid) ignored SIGTERM for 10s: SIGKILL" >&2
			kill -KILL "$pid" 2>/dev/null || true
		fi
		rm -f "$f"
	done
	rm -f "$DIR/endpoints.env" "$DIR/ports"
	echo "local-cluster: down (${#files[@]} processes; logs kept in $DIR/logs)"
}

status() {
	local f pid name admin bad=0
	shopt -s nullglob
	local files=("$DIR"/pids/*.pid)
	((${#files[@]})) || { echo "local-cluster: nothing running in $DIR"; return 3; }
	for f in "${files[@]}"; do
		name=${f##*/}
		name=${name%.pid}
		read -r pid _ <"$f"
		admin=$(cat "$DIR/admin/$name" 2>/dev/null || true)
		if ours "$f"; then
			printf '%-14s pid %-7s admin %-21s readyz %s\n' "$name" "$pid" "$admin" "$(http_status "$admin" /readyz)"
		else
			printf '%-14s pid %-7s DEAD (log: %s)\n' "$name" "$pid" "$DIR/logs/$name.log"
			bad=1
		fi
	done
	return $bad
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*) echo "usage: $0 up|down|status  (state in \$CLUSTER_DIR, default $DIR)" >&2; exit 2 ;;
esac
