"""Validation and argv helpers shared by the launchers.

Cloud jobs fail late and cost money when a flag is missing or a path is local,
so every launcher checks its parameters here first and raises `LaunchError`
with the flag's name and what it should look like.
"""

from collections.abc import Iterable, Sequence

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# boneage-train's exit status after it checkpointed on SIGTERM: "rerun the same
# command to continue" (trainer.checkpointing.PREEMPTED_EXIT_CODE; launch may
# not import the trainer, and a test keeps the two equal). 128 + SIGTERM, so a
# trainer killed by SIGTERM before it could checkpoint is rerun too: it
# resumes from its last periodic checkpoint.
PREEMPTED_EXIT_CODE = 143
# Reruns after preemption before the supervisor gives up (a trainer that exits
# 143 at once every time would otherwise loop forever).
DEFAULT_MAX_RESTARTS = 20


class LaunchError(ValueError):
  """A launch parameter that is missing or cannot work; the message names the flag."""


def require(value: str | None, flag: str, why: str) -> str:
  """Returns `value` stripped, or raises naming `flag` and why it is needed."""
  if value is None or not str(value).strip():
    raise LaunchError(f"{flag} is required ({why})")
  return str(value).strip()


def is_gcs(path: str) -> bool:
  return path.startswith("gs://") and len(path) > len("gs://")


def require_gcs(value: str | None, flag: str, why: str) -> str:
  """Like `require`, and the value must be a gs:// URI (remote workers cannot see local paths)."""
  path = require(value, flag, why)
  if not is_gcs(path):
    raise LaunchError(f"{flag} must be a gs:// URI ({why}); got {path!r}")
  return path.rstrip("/")


def require_remote_path(value: str | None, flag: str, why: str) -> str:
  """A gs:// URI or a /gcs/ Cloud Storage FUSE path, as Vertex AI containers see buckets."""
  path = require(value, flag, why)
  if not (is_gcs(path) or path.startswith("/gcs/")):
    raise LaunchError(f"{flag} must be a gs:// URI or a /gcs/ FUSE path ({why}); got {path!r}")
  return path.rstrip("/")


def require_choice(value: str, flag: str, choices: Sequence[str]) -> str:
  if value not in choices:
    raise LaunchError(f"{flag} must be one of {', '.join(choices)}; got {value!r}")
  return value


def require_positive(value: int | None, flag: str) -> int | None:
  if value is not None and value < 1:
    raise LaunchError(f"{flag} must be at least 1; got {value}")
  return value


def bucket_root(gcs_path: str) -> str:
  """gs://bucket/a/b -> gs://bucket."""
  return "gs://" + gcs_path[len("gs://"):].split("/", 1)[0]


def flag(name: str, value) -> list[str]:
  """`--name=value` as a one-element list, or nothing when value is None."""
  if value is None:
    return []
  if isinstance(value, bool):
    value = "true" if value else "false"
  return [f"--{name}={value}"]


def check_config_overrides(overrides: Iterable[str]) -> list[str]:
  """Each override must be key=value, the form boneage-train's --config_override takes."""
  checked = []
  for override in overrides or ():
    key, sep, _ = override.partition("=")
    if not sep or not key.strip():
      raise LaunchError(f"--config_override must be key=value; got {override!r}")
    checked.append(override)
  return checked


def scaling_overrides(*, per_replica_batch_size: int | None, steps_per_loop: int | None) -> list[str]:
  """The trainer config overrides for the per-replica batch and the steps per tf.function call.

  The trainer derives the global batch (per-replica x replicas) and the scaled
  learning rate from these, so the same flags fit one GPU and a pod slice.
  None leaves the experiment's own value.
  """
  overrides = []
  if require_positive(per_replica_batch_size, "--per_replica_batch_size") is not None:
    overrides.append(f"data.per_replica_batch_size={per_replica_batch_size}")
  if require_positive(steps_per_loop, "--steps_per_loop") is not None:
    overrides.append(f"train.steps_per_loop={steps_per_loop}")
  return overrides


def restart_on_preemption_script(max_restarts: int = DEFAULT_MAX_RESTARTS) -> str:
  """Bash that runs "$@" and reruns it while it exits with PREEMPTED_EXIT_CODE.

  Use as `bash -c SCRIPT NAME PROGRAM ARGS...`. The program runs as a child
  so SIGTERM/SIGINT sent to the script (a container stop, `kill PID`) reach
  it: the trainer checkpoints and exits, and the script then exits with the
  trainer's status instead of rerunning it, since whoever stopped the script
  wanted it stopped. Any other exit status ends the loop with that status; so
  does the preemption status after `max_restarts` reruns.

  Args:
    max_restarts: Reruns allowed after preemption exits.
  """
  require_positive(max_restarts, "--max_restarts")
  code = PREEMPTED_EXIT_CODE
  # One line, so printed commands stay one per line; launch/tpu_vm.sh writes the same text.
  return ("stop=0; child=0; restarts=0; "
          "trap 'stop=1; [ \"$child\" -ne 0 ] && kill -TERM \"$child\" 2>/dev/null' TERM INT; "
          "while true; do "
          "\"$@\" & child=$!; "
          "wait \"$child\"; status=$?; "
          # wait returns early when a trapped signal arrives: wait for the real exit.
          "while [ \"$stop\" -eq 1 ] && kill -0 \"$child\" 2>/dev/null; do wait \"$child\"; status=$?; done; "
          "child=0; "
          f"if [ \"$status\" -ne {code} ] || [ \"$stop\" -eq 1 ]; then exit \"$status\"; fi; "
          f"if [ \"$restarts\" -ge {max_restarts} ]; then "
          f"echo \"restart-on-preemption: $1 exited {code} (preempted) again after {max_restarts} reruns; "
          "giving up\" >&2; exit \"$status\"; fi; "
          "restarts=$((restarts + 1)); "
          f"echo \"restart-on-preemption: $1 exited {code} (preempted); rerun $restarts of {max_restarts}\" >&2; "
          "done")


def train_args(*, data_dir: str, model_dir: str, experiment: str, strategy: str, precision: str,
               tpu: str | None = None, config_overrides: Iterable[str] = (),
               deterministic: bool = False) -> list[str]:
  """The boneage-train flags (without the program name) for one replica.

  Args:
    data_dir: TFDS data dir holding rsna_bone_age/<config>/<version>.
    model_dir: Where checkpoints, logs/, config.json and export/ go.
    experiment: A named experiment registered in the trainer.
    strategy: One of STRATEGIES.
    precision: One of PRECISIONS.
    tpu: TPU name for TPUClusterResolver ("local" on a TPU VM host).
    config_overrides: key=value strings, each passed as its own --config_override.
    deterministic: Ask the trainer for op determinism (slower; for reproductions).
  """
  require(experiment, "--experiment", "the trainer's named experiment, e.g. the 384 px Xception recipe")
  require_choice(strategy, "--strategy", STRATEGIES)
  require_choice(precision, "--precision", PRECISIONS)
  if strategy == "tpu":
    require(tpu, "--tpu", "TPUStrategy needs a TPU name; 'local' on a TPU VM")
  args = [f"--data_dir={data_dir}", f"--model_dir={model_dir}", f"--experiment={experiment}",
          f"--strategy={strategy}", f"--precision={precision}"]
  args += flag("tpu", tpu)
  args += [f"--config_override={o}" for o in check_config_overrides(config_overrides)]
  if deterministic:
    args.append("--deterministic")
  return args
