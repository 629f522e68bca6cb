#!/usr/bin/env bash
# N training processes on this machine (127.0.0.1), each with emulated CPU devices, all
# writing one workdir: the multi-host code path (jax.distributed, per-process data,
# sharded checkpoints) without a cluster.
#
#   launch/local.sh N [--devices D] [--port P] [--log-dir DIR] [--dry-run] [-- TRAIN ARGS...]
#   launch/local.sh 2 --log-dir logs -- --config configs/demo_digits.py:runlocal --workdir /tmp/p2
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/local.sh N [--devices D] [--port P] [--log-dir DIR] [--dry-run] [-- TRAIN ARGS...]

Starts N processes of `python -m flexivit_jax.train TRAIN ARGS...` on 127.0.0.1,
process i with FLEXIVIT_PROCESS_ID=i, FLEXIVIT_NUM_PROCESSES=N,
FLEXIVIT_COORDINATOR_ADDRESS=127.0.0.1:P and FLEXIVIT_NUM_CPU_DEVICES=D.
Exits with the first non-zero exit status of a process (143 after SIGTERM,
which is forwarded to every process).

  --devices D   emulated CPU devices per process (default 1)
  --port P      coordinator port (default: a free port)
  --log-dir DIR each process's stdout and stderr to DIR/process_<i>.log (default: this
                terminal); process 0's log has the progress lines, the others errors only
  --dry-run     print the commands, run nothing
  PYTHON        environment variable: the interpreter (default: python)
USAGE
}

num=""
devices=1
port=""
log_dir=""
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --devices) devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *)
      if [[ -n "$num" ]]; then echo "error: unexpected argument $1 (see --help)" >&2; exit 2; fi
      num="$1"; shift ;;
  esac
done
if ! [[ "$num" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: N (the number of processes) must be a positive integer, got '${num}'" >&2
  exit 2
fi
if ! [[ "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --devices must be a positive integer, got '${devices}'" >&2
  exit 2
fi
python="${PYTHON:-python}"
if [[ -n "$log_dir" && "$dry_run" == 0 ]]; then
  mkdir -p "$log_dir"
fi
if [[ -z "$port" ]]; then
  if [[ "$dry_run" == 1 ]]; then
    port=12345
  else
    port="$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  fi
fi

pids=()
# shellcheck disable=SC2329  # Called by the trap.
forward() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; }
trap forward TERM INT

for ((i = 0; i < num; i++)); do
  env_args=(FLEXIVIT_NUM_CPU_DEVICES="$devices" FLEXIVIT_NUM_PROCESSES="$num"
            FLEXIVIT_PROCESS_ID="$i" FLEXIVIT_COORDINATOR_ADDRESS="127.0.0.1:${port}")
  cmd=(env "${env_args[@]}" "$python" -m flexivit_jax.train "$@")
  log="${log_dir:+${log_dir}/process_${i}.log}"
  if [[ "$dry_run" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    if [[ -n "$log" ]]; then printf '> %q 2>&1' "$log"; fi
    echo
  elif [[ -n "$log" ]]; then
    echo "process ${i}: log in ${log}"
    "${cmd[@]}" > "$log" 2>&1 &
    pids+=("$!")
  else
    "${cmd[@]}" &
    pids+=("$!")
  fi
done

status=0
for pid in "${pids[@]}"; do
  # `wait` returns early when a forwarded signal arrives; wait again for the real exit.
  while true; do
    code=0
    wait "$pid" || code=$?
    if kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  if [[ "$code" != 0 && "$status" == 0 ]]; then status="$code"; fi
done
exit "$status"
