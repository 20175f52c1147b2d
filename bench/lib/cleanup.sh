# Sourced by the benchmark scripts: a work directory $work, and at exit the
# cleanup of what the script started: every PID it appends to pids is
# killed and waited for, every network namespace it appends to nss is
# deleted, a function on_exit runs if the script defines one (to keep
# something of $work), and $work is removed.
work=$(mktemp -d)
pids=(); nss=()
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "${nss[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  if declare -F on_exit >/dev/null; then on_exit || true; fi
  rm -rf "$work"
}
trap bench_cleanup EXIT
