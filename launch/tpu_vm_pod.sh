#!/usr/bin/env bash
# Trains on a Cloud TPU VM (a single host or a pod slice): creates the TPU VM unless it exists,
# installs this project on every worker, then runs the same train command on all workers with
# --multi_host (jax.distributed finds the pod's coordinator by itself).
#
#   TPU_NAME=t5-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#   MODEL_DIR=gs://BUCKET/runs/t5_efficient_tiny \
#   launch/tpu_vm_pod.sh --gin_file=models/quickstart_tiny.gin --gin_file=runs/pretrain.gin \
#     --gin.C4_TFDS_DATA_DIR="'gs://BUCKET/tensorflow_datasets'"
#
# Every worker must read the data and write MODEL_DIR: use gs:// paths (Orbax saves from all
# workers into one checkpoint; a worker's local disk is not enough). Re-running the command
# resumes from the latest checkpoint in MODEL_DIR.
#
# Environment:
#   TPU_NAME, ZONE           required
#   PROJECT                  default: gcloud's configured project
#   ACCELERATOR_TYPE         default v4-8 (e.g. v4-32, v5litepod-16, v5p-64)
#   RUNTIME_VERSION          default tpu-ubuntu2204-base (v5e: v2-alpha-tpuv5-lite)
#   SPOT=1                   create a spot VM (preemptible; re-run to resume)
#   MODEL_DIR                required, gs://...
#   REPO_URL, REPO_REF       clone this git URL at REF on the workers; default: copy the
#                            committed HEAD of this checkout (git archive + scp)
#   JAX_SPEC                 default "jax[tpu]" (the project's jax bounds apply)
#   SKIP_INSTALL=1           the workers are already set up
#   DETACH=1                 run under nohup (log: ~/t5x_lite_train.log on each worker) and return
#   STOP=1                   stop a running training as a preemption would: SIGTERM to the
#                            training process on every worker; all save the same step and exit 0
# Ctrl-C in the foreground does the same as STOP=1 (and then waits for the save).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${MODEL_DIR:?set MODEL_DIR (gs://...)}"
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-8}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
JAX_SPEC=${JAX_SPEC:-jax[tpu]}
REMOTE_DIR=t5x_lite  # relative to the workers' home directories
VENV=t5x_lite_venv

if [[ $MODEL_DIR != gs://* ]]; then
  echo "error: MODEL_DIR=$MODEL_DIR must be on GCS (gs://...): all workers write checkpoints" >&2
  exit 2
fi
command -v gcloud >/dev/null || { echo "error: gcloud is not installed" >&2; exit 2; }

tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
[[ -n ${PROJECT:-} ]] && where+=(--project="$PROJECT")
on_all() {  # runs a shell command on every worker, in parallel
  "${tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"
}
# Each worker's training process writes its pid here (see step 3).
PID_FILE=t5x_lite_train.pid  # in each worker's home directory
stop_training() {
  on_all "pid=\$(cat ~/$PID_FILE 2>/dev/null) && kill -TERM \$pid 2>/dev/null \
&& echo \"\$(hostname): SIGTERM sent to \$pid\" || echo \"\$(hostname): no training running\""
}
if [[ ${STOP:-0} == 1 ]]; then
  stop_training
  exit 0
fi

# 1. The TPU VM.
if "${tpu[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state)' >/dev/null 2>&1; then
  echo "tpu_vm_pod.sh: reusing $TPU_NAME ($("${tpu[@]}" describe "$TPU_NAME" "${where[@]}" \
    --format='value(acceleratorType,state)'))"
else
  echo "tpu_vm_pod.sh: creating $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) in $ZONE"
  create=(--accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  [[ ${SPOT:-0} == 1 ]] && create+=(--spot)
  "${tpu[@]}" create "$TPU_NAME" "${where[@]}" "${create[@]}"
fi

# 2. The project on every worker (same code everywhere: all processes must build the same program).
if [[ ${SKIP_INSTALL:-0} != 1 ]]; then
  if [[ -n ${REPO_URL:-} ]]; then
    ref=${REPO_REF:-main}
    on_all "set -e; if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR fetch -q origin; \
else git clone -q $(printf '%q' "$REPO_URL") $REMOTE_DIR; fi; \
git -C $REMOTE_DIR checkout -q --detach $(printf '%q' "$ref")"
  else
    repo_root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
    archive=$(mktemp "${TMPDIR:-/tmp}/t5x_lite.XXXXXX.tar.gz")
    trap 'rm -f "$archive"' EXIT
    git -C "$repo_root" archive --format=tar.gz -o "$archive" HEAD
    echo "tpu_vm_pod.sh: copying $(git -C "$repo_root" rev-parse --short HEAD) (committed files only)"
    "${tpu[@]}" scp "$archive" "$TPU_NAME":t5x_lite.tar.gz "${where[@]}" --worker=all
    on_all "set -e; rm -rf $REMOTE_DIR; mkdir -p $REMOTE_DIR; tar -xzf t5x_lite.tar.gz -C $REMOTE_DIR"
  fi
  on_all "set -e; python3 -m venv ~/$VENV; ~/$VENV/bin/pip install -q --upgrade pip; \
~/$VENV/bin/pip install -q -e ~/$REMOTE_DIR $(printf '%q' "$JAX_SPEC")"
fi

# 3. The same command on every worker; --multi_host initialises jax.distributed from the pod.
# `exec` keeps the recorded pid that of python, so STOP=1 signals the training itself.
args=$(printf '%q ' "$@" "--gin.MODEL_DIR='$MODEL_DIR'" --multi_host)
train="cd ~/$REMOTE_DIR && echo \$\$ >~/$PID_FILE && exec ~/$VENV/bin/python -m t5x_lite.train $args"
if [[ ${DETACH:-0} == 1 ]]; then
  on_all "nohup bash -c $(printf '%q' "$train") >>~/t5x_lite_train.log 2>&1 </dev/null &"
  echo "tpu_vm_pod.sh: started on all workers; logs: ~/t5x_lite_train.log on each," \
    "metrics: $MODEL_DIR (worker 0 writes them); stop with STOP=1 $0"
else
  # The ssh sessions run in their own process group, so a Ctrl-C here does not cut them (which
  # would kill the training without a save); it asks every worker to save and stop instead.
  set -m
  on_all "set -o pipefail; bash -c $(printf '%q' "$train") 2>&1 | tee -a ~/t5x_lite_train.log" &
  session=$!
  set +m
  trap 'echo "tpu_vm_pod.sh: interrupted; asking every worker to save and stop" >&2; stop_training' INT TERM
  status=0
  while true; do
    wait "$session" && status=0 || status=$?
    kill -0 "$session" 2>/dev/null || break  # a trap interrupted the wait: keep waiting
  done
  exit "$status"
fi
