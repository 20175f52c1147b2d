# Sourced by the TURN benchmarks: a scratch directory and the processes
# they start, both cleaned up on exit, and free-port helpers.
#
# After sourcing: $work is a fresh directory; add every background PID to
# pids (pids+=($!)); free_port N prints the first port from N free for
# both UDP and TCP; wait_port P waits up to 5 s for a UDP listener on P.
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() {
  local p=$1
  while ss -Hlnu "sport = :$p" | grep -q . || ss -Hlnt "sport = :$p" | grep -q .; do p=$((p+1)); done
  echo $p
}
wait_port() { for _ in $(seq 100); do ss -Hlnu "sport = :$1" | grep -q . && return 0; sleep 0.05; done; echo "port $1 never opened"; exit 1; }
