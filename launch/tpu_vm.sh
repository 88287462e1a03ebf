#!/usr/bin/env bash
# Train bone age on a Cloud TPU VM with TPUStrategy.
#
# Creates the TPU VM, copies this repository to every host, installs it with
# the `tpu` extra (the tensorflow-tpu wheel and its libtpu) into a venv, and
# runs boneage-train --strategy=tpu. Run it from the repository root:
#
#   bash launch/tpu_vm.sh --project=my-project --zone=us-west4-a \
#     --tpu_name=boneage-v5e --accelerator_type=v5litepod-8 \
#     --runtime_version=v2-alpha-tpuv5-lite \
#     --data_dir=gs://my-bucket/tfds --model_dir=gs://my-bucket/models/run1 \
#     --experiment=xception_384 --dry_run
#
# --dry_run prints every command (one per line, shell-quoted) instead of
# running it. Single-host slices (accelerator suffix <= 8, e.g. v5litepod-8,
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
LIBTPU_INDEX="https://storage.googleapis.com/libtpu-tf-releases/index.html"
CONFIG_OVERRIDES=()
DRY_RUN=0
SKIP_CREATE=0
DELETE_AFTER=0

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'USAGE'
Flags (all --name=value):
  --project --zone --tpu_name --data_dir --model_dir   (required)
  --experiment (xception_384)
  --accelerator_type (v5litepod-8)  --runtime_version (v2-alpha-tpuv5-lite)
  --precision (mixed_bfloat16)  --config_override=key=value (repeatable)
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

INSTALL_COMMAND="set -e; \
$(quote "$PYTHON") -c 'import ensurepip' >/dev/null 2>&1 || { sudo apt-get update -q && sudo apt-get install -y -q $(quote "$PYTHON") $(quote "$PYTHON-venv"); }; \
rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf $(basename "$TARBALL") -C $REMOTE_DIR; \
$(quote "$PYTHON") -m venv \$HOME/$VENV_DIR; \
$VENV_BIN/pip install -q --upgrade pip; \
cd $REMOTE_DIR && $VENV_BIN/pip install '.[tpu]' -f $LIBTPU_INDEX"
TRAIN_COMMAND="cd $REMOTE_DIR && ${TRAIN_ENV}$VENV_BIN/boneage-train $(join_quoted "${TRAIN_ARGS[@]}")"

if (( ! SKIP_CREATE )); then
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_TARGET[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
fi
run tar -czf "$TARBALL" --exclude=./.git --exclude=./.venv --exclude=./demo_output \
  --exclude=./bench_output -C "$SOURCE_DIR" .
run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:" "${GCLOUD_TARGET[@]}" --worker=all
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TARGET[@]}" --worker=all --command="$INSTALL_COMMAND"
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TARGET[@]}" --worker="$TRAIN_WORKER" --command="$TRAIN_COMMAND"
if (( DELETE_AFTER )); then
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_TARGET[@]}" --quiet
fi
