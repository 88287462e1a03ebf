#!/usr/bin/env bash
# Train bone age on a Cloud TPU VM with TPUStrategy.
#
# Creates the TPU VM, copies this repository to every host, installs it with
# the `tpu` extra (tensorflow-tpu and a libtpu it can load) into a venv, and
# starts boneage-train --strategy=tpu detached from the ssh session (nohup +
# setsid), under a loop that reruns it when it exits 143 (preempted, after
# checkpointing). Its output goes to ~/boneage-train.log on the host, copied to
# <model_dir>/host_logs/ every minute and at the end. Run it from the repository root:
#
#   bash launch/tpu_vm.sh --project=my-project --zone=us-west4-a \
#     --tpu_name=boneage-v5e --accelerator_type=v5litepod-8 \
#     --runtime_version=v2-alpha-tpuv5-lite \
#     --data_dir=gs://my-bucket/tfds --model_dir=gs://my-bucket/models/run1 \
#     --experiment=xception_384 --dry_run
#
# --dry_run prints every command (one per line, shell-quoted) instead of
# running it; the commands to follow the log and to stop training go to stderr
# (--follow runs the first). Single-host slices (accelerator suffix <= 8, e.g. v5litepod-8,
# v4-8, v3-8) train on every worker with --tpu=local; larger slices install on
# all hosts and start the single TensorFlow client on worker 0 with
# --tpu=<tpu_name> (TPU_LOAD_LIBRARY=0, as TensorFlow pod slices need).
set -euo pipefail

PROJECT=""
ZONE=""
TPU_NAME=""
ACCELERATOR_TYPE="v5litepod-8"
RUNTIME_VERSION="v2-alpha-tpuv5-lite"
DATA_DIR=""
MODEL_DIR=""
EXPERIMENT="xception_384"
PRECISION="mixed_bfloat16"
PYTHON="python3.11"
SOURCE_DIR="."
REMOTE_DIR="bone-age"
VENV_DIR="boneage-venv"
PER_REPLICA_BATCH_SIZE=""
STEPS_PER_LOOP=""
MAX_RESTARTS=20
PREEMPTED_EXIT_CODE=143  # boneage-train's "checkpointed, rerun me" status (launch/common.py)
LOG_FILE="boneage-train.log"
PID_FILE="boneage-train.pid"
LOG_SYNC_SECONDS=60
CONFIG_OVERRIDES=()
DRY_RUN=0
FOLLOW=0
SKIP_CREATE=0
DELETE_AFTER=0

usage() {
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'USAGE'
Flags (all --name=value):
  --project --zone --tpu_name --data_dir --model_dir   (required)
  --experiment (xception_384)
  --accelerator_type (v5litepod-8)  --runtime_version (v2-alpha-tpuv5-lite)
  --precision (mixed_bfloat16)  --config_override=key=value (repeatable)
  --per_replica_batch_size --steps_per_loop (the experiment's when unset)
  --max_restarts (20: reruns after a preemption exit before giving up)
  --log_sync_seconds (60: how often the host log is copied to <model_dir>/host_logs/)  --follow
  --python (python3.11: the interpreter the venv is built from, installed with apt if absent)
  --source_dir (.)  --skip_create  --delete_after  --dry_run
USAGE
}

die() {
  echo "tpu_vm.sh: error: $*" >&2
  exit 2
}

for arg in "$@"; do
  case "$arg" in
    --project=*) PROJECT="${arg#*=}" ;;
    --zone=*) ZONE="${arg#*=}" ;;
    --tpu_name=*) TPU_NAME="${arg#*=}" ;;
    --accelerator_type=*) ACCELERATOR_TYPE="${arg#*=}" ;;
    --runtime_version=*) RUNTIME_VERSION="${arg#*=}" ;;
    --data_dir=*) DATA_DIR="${arg#*=}" ;;
    --model_dir=*) MODEL_DIR="${arg#*=}" ;;
    --experiment=*) EXPERIMENT="${arg#*=}" ;;
    --precision=*) PRECISION="${arg#*=}" ;;
    --python=*) PYTHON="${arg#*=}" ;;
    --source_dir=*) SOURCE_DIR="${arg#*=}" ;;
    --config_override=*) CONFIG_OVERRIDES+=("${arg#*=}") ;;
    --per_replica_batch_size=*) PER_REPLICA_BATCH_SIZE="${arg#*=}" ;;
    --steps_per_loop=*) STEPS_PER_LOOP="${arg#*=}" ;;
    --max_restarts=*) MAX_RESTARTS="${arg#*=}" ;;
    --log_sync_seconds=*) LOG_SYNC_SECONDS="${arg#*=}" ;;
    --follow) FOLLOW=1 ;;
    --dry_run) DRY_RUN=1 ;;
    --skip_create) SKIP_CREATE=1 ;;
    --delete_after) DELETE_AFTER=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $arg (flags take the form --name=value; see --help)" ;;
  esac
done

[[ -n "$PROJECT" ]] || die "--project is required (the GCP project that owns the TPU VM)"
[[ -n "$ZONE" ]] || die "--zone is required (a zone that offers $ACCELERATOR_TYPE, e.g. us-west4-a for v5e)"
[[ -n "$TPU_NAME" ]] || die "--tpu_name is required (the TPU VM to create or reuse)"
[[ -n "$EXPERIMENT" ]] || die "--experiment is required (the trainer's named experiment)"
[[ "$DATA_DIR" == gs://?* ]] || die "--data_dir must be a gs:// URI (the TPU hosts read the dataset there); got '$DATA_DIR'"
[[ "$MODEL_DIR" == gs://?* ]] || die "--model_dir must be a gs:// URI (TPUs write checkpoints only to Cloud Storage); got '$MODEL_DIR'"
case "$PRECISION" in
  float32|mixed_bfloat16|mixed_float16) ;;
  *) die "--precision must be float32, mixed_bfloat16 or mixed_float16; got '$PRECISION'" ;;
esac
[[ "$ACCELERATOR_TYPE" =~ ^v[0-9a-z]+-[0-9]+$ ]] || die "--accelerator_type must look like v5litepod-8 or v4-8; got '$ACCELERATOR_TYPE'"
[[ -f "$SOURCE_DIR/setup.py" ]] || die "--source_dir must be the repository root (no setup.py in '$SOURCE_DIR')"
for override in "${CONFIG_OVERRIDES[@]+"${CONFIG_OVERRIDES[@]}"}"; do
  [[ "$override" == ?*=* ]] || die "--config_override must be key=value; got '$override'"
done
for pair in "--per_replica_batch_size=$PER_REPLICA_BATCH_SIZE" "--steps_per_loop=$STEPS_PER_LOOP" \
            "--max_restarts=$MAX_RESTARTS" "--log_sync_seconds=$LOG_SYNC_SECONDS"; do
  value="${pair#*=}"
  [[ -z "$value" || "$value" =~ ^[1-9][0-9]*$ ]] || die "${pair%%=*} must be a whole number of at least 1; got '$value'"
done
[[ -n "$MAX_RESTARTS" ]] || die "--max_restarts must be a whole number of at least 1; got ''"
[[ -n "$LOG_SYNC_SECONDS" ]] || die "--log_sync_seconds must be a whole number of at least 1; got ''"
SCALING_OVERRIDES=()
[[ -z "$PER_REPLICA_BATCH_SIZE" ]] || SCALING_OVERRIDES+=("data.per_replica_batch_size=$PER_REPLICA_BATCH_SIZE")
[[ -z "$STEPS_PER_LOOP" ]] || SCALING_OVERRIDES+=("train.steps_per_loop=$STEPS_PER_LOOP")
CONFIG_OVERRIDES=("${SCALING_OVERRIDES[@]+"${SCALING_OVERRIDES[@]}"}" "${CONFIG_OVERRIDES[@]+"${CONFIG_OVERRIDES[@]}"}")

# Quotes one word the way Python's shlex.quote does, so printed lines can be
# pasted into a shell or parsed back with shlex.split.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\"\'\"\'}"
  fi
}

join_quoted() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

run() {
  if (( DRY_RUN )); then
    join_quoted "$@"
    echo
  else
    "$@"
  fi
}

CHIPS="${ACCELERATOR_TYPE##*-}"
GCLOUD_TARGET=(--project="$PROJECT" --zone="$ZONE")
TARBALL="${TMPDIR:-/tmp}/${TPU_NAME}-source.tar.gz"
VENV_BIN="\$HOME/$VENV_DIR/bin"

TRAIN_ARGS=(--data_dir="$DATA_DIR" --model_dir="$MODEL_DIR" --experiment="$EXPERIMENT"
            --strategy=tpu --precision="$PRECISION")
for override in "${CONFIG_OVERRIDES[@]+"${CONFIG_OVERRIDES[@]}"}"; do
  TRAIN_ARGS+=(--config_override="$override")
done

if (( CHIPS <= 8 )); then
  TRAIN_WORKER="all"
  TRAIN_ENV=""
  TRAIN_ARGS+=(--tpu=local)
else
  TRAIN_WORKER="0"
  TRAIN_ENV="TPU_LOAD_LIBRARY=0 "
  TRAIN_ARGS+=(--tpu="$TPU_NAME")
fi

# Reruns "$@" while it exits with the preemption status; SIGTERM to the loop
# (the stop command below) reaches the trainer, which checkpoints, and then the
# loop exits instead of rerunning. The same text as
# launch/common.py:restart_on_preemption_script (a test keeps them equal).
RESTART_LOOP="stop=0; child=0; restarts=0; \
trap 'stop=1; [ \"\$child\" -ne 0 ] && kill -TERM \"\$child\" 2>/dev/null' TERM INT; \
while true; do \"\$@\" & child=\$!; wait \"\$child\"; status=\$?; \
while [ \"\$stop\" -eq 1 ] && kill -0 \"\$child\" 2>/dev/null; do wait \"\$child\"; status=\$?; done; \
child=0; \
if [ \"\$status\" -ne $PREEMPTED_EXIT_CODE ] || [ \"\$stop\" -eq 1 ]; then exit \"\$status\"; fi; \
if [ \"\$restarts\" -ge $MAX_RESTARTS ]; then \
echo \"restart-on-preemption: \$1 exited $PREEMPTED_EXIT_CODE (preempted) again after $MAX_RESTARTS reruns; giving up\" >&2; \
exit \"\$status\"; fi; \
restarts=\$((restarts + 1)); \
echo \"restart-on-preemption: \$1 exited $PREEMPTED_EXIT_CODE (preempted); rerun \$restarts of $MAX_RESTARTS\" >&2; \
done"
# Copies the host's log to the model dir every LOG_SYNC_SECONDS while the
# loop (pid $2) runs, and once more when it has ended.
LOG_SYNC="while kill -0 \"\$2\" 2>/dev/null; do sleep $LOG_SYNC_SECONDS; gcloud storage cp -q \"\$0\" \"\$1\"; done; \
gcloud storage cp -q \"\$0\" \"\$1\""

INSTALL_COMMAND="set -e; \
$(quote "$PYTHON") -c 'import ensurepip' >/dev/null 2>&1 || { sudo apt-get update -q && sudo apt-get install -y -q $(quote "$PYTHON") $(quote "$PYTHON-venv"); }; \
rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf $(basename "$TARBALL") -C $REMOTE_DIR; \
$(quote "$PYTHON") -m venv \$HOME/$VENV_DIR; \
$VENV_BIN/pip install -q --upgrade pip; \
cd $REMOTE_DIR && $VENV_BIN/pip install '.[tpu]'"
# Detached from the ssh session: setsid + nohup, stdin closed, output to the
# log file; the loop's pid goes to PID_FILE for the stop command.
TRAIN_COMMAND="cd $REMOTE_DIR && ${TRAIN_ENV}nohup setsid bash -c $(quote "$RESTART_LOOP") restart-on-preemption \
$VENV_BIN/boneage-train $(join_quoted "${TRAIN_ARGS[@]}") >\$HOME/$LOG_FILE 2>&1 </dev/null & \
echo \$! >\$HOME/$PID_FILE; \
nohup setsid bash -c $(quote "$LOG_SYNC") \$HOME/$LOG_FILE $(quote "$MODEL_DIR/host_logs")/\$(hostname).log \$(cat \$HOME/$PID_FILE) \
>/dev/null 2>&1 </dev/null & \
echo \"boneage-train started on \$(hostname): pid \$(cat \$HOME/$PID_FILE), log \$HOME/$LOG_FILE\""
FOLLOW_COMMAND=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TARGET[@]}" --worker=0
                --command="tail -n 200 -F \$HOME/$LOG_FILE")
STOP_COMMAND=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TARGET[@]}" --worker="$TRAIN_WORKER"
              --command="kill -TERM \$(cat \$HOME/$PID_FILE)")

if (( ! SKIP_CREATE )); then
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_TARGET[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
fi
run tar -czf "$TARBALL" --exclude=./.git --exclude=./.venv --exclude=./demo_output \
  --exclude=./bench_output -C "$SOURCE_DIR" .
run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:" "${GCLOUD_TARGET[@]}" --worker=all
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TARGET[@]}" --worker=all --command="$INSTALL_COMMAND"
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TARGET[@]}" --worker="$TRAIN_WORKER" --command="$TRAIN_COMMAND"
echo "tpu_vm.sh: training runs detached; follow its log with:" >&2
echo "  $(join_quoted "${FOLLOW_COMMAND[@]}")" >&2
echo "stop it (the trainer checkpoints first) with:" >&2
echo "  $(join_quoted "${STOP_COMMAND[@]}")" >&2
if (( FOLLOW )); then
  run "${FOLLOW_COMMAND[@]}"
fi
if (( DELETE_AFTER )); then
  # Training is detached, so deleting right after starting it would kill it.
  echo "tpu_vm.sh: --delete_after: delete the TPU VM when training has finished with:" >&2
  echo "  $(join_quoted gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_TARGET[@]}" --quiet)" >&2
fi
