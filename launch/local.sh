#!/usr/bin/env bash
# Runs `python -m t5x_lite.train` as NUM_PROCESSES local CPU processes joined by jax.distributed,
# the same code path as a multi-host pod (gloo collectives, coordinator on 127.0.0.1).
#
#   launch/local.sh NUM_PROCESSES [train flags...]
#   launch/local.sh 2 --gin_file=models/quickstart_tiny.gin --gin_file=runs/quickstart.gin \
#     --gin.MODEL_DIR="'runs/local2'"
#
# Environment:
#   DEVICES_PER_PROCESS  CPU devices per process (default 2); the mesh spans all processes' devices
#   LOG_DIR              per-process logs process_<i>.log (default MODEL_DIR/logs, else a tmp dir)
#   PYTHON               interpreter with t5x_lite installed (default: the active virtualenv's,
#                        else the checkout's .venv/bin/python, else python3)
#   COORDINATOR_PORT     fixed coordinator port (default: a free one)
#   KILL_GRACE_S         when one process fails: seconds between SIGTERM and SIGKILL for the
#                        others (default 10; peers stuck in a collective never exit on their own)
# Process 0 also prints to the console. If one process fails, all are stopped and the exit status
# is that process's. Ctrl-C / SIGTERM are forwarded to every process as SIGTERM: all save the same
# step (or, still starting, exit at once), the script waits for them however long the save takes,
# and exits 0. A second Ctrl-C / SIGTERM kills them.
set -euo pipefail
if (( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501 )); then
  echo "error: $0 needs bash >= 5.1 (wait -n -p), this is $BASH_VERSION" >&2
  exit 2
fi

usage() {
  echo "usage: $0 NUM_PROCESSES [python -m t5x_lite.train flags...]" >&2
  exit 2
}
[[ $# -ge 1 && $1 =~ ^[1-9][0-9]*$ ]] || usage
num_processes=$1
shift
devices=${DEVICES_PER_PROCESS:-2}
[[ $devices =~ ^[1-9][0-9]*$ ]] || { echo "error: DEVICES_PER_PROCESS=$devices is not a positive integer" >&2; exit 2; }
# The interpreter: $PYTHON, else the active virtualenv's, else this checkout's .venv, else python3.
checkout_python=$(dirname "${BASH_SOURCE[0]}")/../.venv/bin/python
python=${PYTHON:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}}
[[ -n $python ]] || { [[ -x $checkout_python ]] && python=$checkout_python; } || python=python3
grace=${KILL_GRACE_S:-10}

# A free port: bind port 0 and release it (a tiny race, acceptable on one machine).
port=${COORDINATOR_PORT:-$("$python" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
address=127.0.0.1:$port

if [[ -z ${LOG_DIR:-} ]]; then
  model_dir=""
  for arg in "$@"; do
    [[ $arg == --gin.MODEL_DIR=* ]] && model_dir=${arg#--gin.MODEL_DIR=}
  done
  model_dir=${model_dir//\'/}
  model_dir=${model_dir//\"/}
  if [[ -n $model_dir && $model_dir != None && $model_dir != *://* ]]; then
    LOG_DIR=$model_dir/logs
  else
    LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/t5x_lite_local.XXXXXX")
  fi
fi
mkdir -p "$LOG_DIR"
echo "local.sh: $num_processes processes x $devices CPU devices, coordinator $address, logs in $LOG_DIR/process_<i>.log"

# Each process runs as its own job (set -m: own process group), so one `kill -- -PGID` reaches
# everything it started.
set -m
pids=()
running=()

stop_all() {
  local signal=$1 pid waited=0
  # TERM goes to the python processes themselves, not to the `tee` that copies process 0's
  # output to the console: a killed tee would fail process 0's next print before it saves.
  for pid in "${pids[@]}"; do
    kill "-$signal" "$pid" 2>/dev/null || true
  done
  # Peers blocked in a collective never reach a step boundary: escalate after the grace period.
  while (( waited < grace * 10 )); do
    local alive=0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    (( alive )) || return 0
    sleep 0.1
    waited=$((waited + 1))
  done
  echo "local.sh: processes still running after ${grace}s; sending SIGKILL" >&2
  for pid in "${pids[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}

# A second Ctrl-C or SIGTERM while they save: kill them now.
# shellcheck disable=SC2317  # invoked from the traps below
on_second_signal() {
  trap - INT TERM
  echo "local.sh: stopping now (SIGKILL); the last checkpoint each run completed is kept" >&2
  for pid in "${pids[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  trap - EXIT
  exit 130
}

# Ctrl-C or SIGTERM: every process gets SIGTERM, as in a preemption. jax's coordination service
# agrees on one step, all processes save it and exit 0 (or, before their first step, exit at
# once), and so does this script; it waits however long the save takes. A process that fails
# makes the exit status non-zero.
# shellcheck disable=SC2317  # invoked from the traps below
on_signal() {
  trap 'on_second_signal' INT TERM
  echo "local.sh: $1, asking all processes to save and stop (SIGTERM); waiting for them" \
    "(Ctrl-C again kills them)" >&2
  local pid rc status=0
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${running[@]}"; do
    rc=0
    wait "$pid" || rc=$?
    (( rc == 0 || status != 0 )) || status=$rc
  done
  # Whatever the processes left in their groups (process 0's tee drains within a moment).
  local waited=0
  while (( waited < 10 )); do
    local left=0
    for pid in "${pids[@]}"; do
      kill -0 -- "-$pid" 2>/dev/null && left=1
    done
    (( left )) || break
    sleep 0.1
    waited=$((waited + 1))
  done
  for pid in "${pids[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  trap - EXIT
  if (( status == 0 )); then
    echo "local.sh: all processes stopped cleanly (saved, or exited before their first step)" >&2
  else
    echo "local.sh: a process ended with status $status (logs: $LOG_DIR/process_<i>.log)" >&2
  fi
  exit "$status"
}
trap 'on_signal interrupted' INT
trap 'on_signal terminated' TERM
# Whatever ends this script (set -e included) must not leave processes behind.
trap 'stop_all KILL' EXIT

for ((i = 0; i < num_processes; i++)); do
  log=$LOG_DIR/process_$i.log
  echo "=== $(date -u +%FT%TZ) process $i of $num_processes: $python -m t5x_lite.train $*" >>"$log"
  run=(env JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=
    "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices"
    "T5X_LITE_COORDINATOR_ADDRESS=$address" "T5X_LITE_NUM_PROCESSES=$num_processes"
    "T5X_LITE_PROCESS_ID=$i" "$python" -m t5x_lite.train "$@")
  if (( i == 0 )); then
    # tee -i: a Ctrl-C in the terminal must not end the copy while process 0 is still saving.
    "${run[@]}" > >(tee -ia "$log") 2>&1 &
  else
    "${run[@]}" >>"$log" 2>&1 &
  fi
  pids+=("$!")
  running+=("$!")
done
set +m  # jobs keep their own process groups; no job-status chatter from here on

# Reap processes as they finish; the first failure stops the rest.
status=0
while (( ${#running[@]} )); do
  rc=0
  done_pid=""
  wait -n -p done_pid "${running[@]}" || rc=$?
  failed="?"
  for i in "${!pids[@]}"; do
    [[ ${pids[$i]} == "$done_pid" ]] && failed=$i
  done
  if [[ $failed == "?" ]]; then
    running=()
  else
    unset "running[$failed]"
  fi
  if (( rc != 0 )); then
    status=$rc
    echo "local.sh: process $failed exited with status $rc; stopping the others" \
      "(log: $LOG_DIR/process_$failed.log)" >&2
    if [[ $failed != 0 && -f $LOG_DIR/process_$failed.log ]]; then
      tail -n 5 "$LOG_DIR/process_$failed.log" | sed "s/^/  process $failed: /" >&2
    fi
    stop_all TERM
    break
  fi
done
wait 2>/dev/null || true
trap - EXIT
exit "$status"
