"""`boneage-launch TARGET [flags] [--dry_run]`: print or run a real workload.

Targets:
  dataflow-preprocess  build the TFDS dataset on Dataflow (boneage-preprocess)
  dataflow-score       batch-score radiographs on Dataflow (boneage-score)
  vertex-train         Vertex AI custom job: --mode=single_gpu|multi_gpu|multi_worker|tpu
  tpu-vm               create a TPU VM and train on it (launch/tpu_vm.sh)
  local-multiworker    multi-worker training on this machine (launch/local_multiworker.py)
  tensorboard          TensorBoard over <model_dir>/logs

With --dry_run nothing runs: commands are printed shell-quoted on one line,
the Vertex AI job as its CustomJobSpec JSON followed by the gcloud command.

The command line follows every boneage-* command's convention
(bone_age/cli.py): each target's flags live in a private absl FlagValues,
`boneage-launch TARGET --help` lists them by group, a usage mistake (an
unknown flag included) exits 2 with one line naming the flag, and
`--verbosity=debug` adds the traceback. The dataflow targets hand flags
they do not define to the job as Beam options once Beam's own parser knows
them; local-multiworker forwards what follows `--`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shlex
import subprocess
import sys
from typing import Callable

from absl import flags

from bone_age import cli
from launch import common
from launch import dataflow
from launch import local
from launch import vertex

_PROG = "boneage-launch"
# The trainer's registered recipe for real runs (trainer/experiments.py); named
# here, not imported, so launching never needs TensorFlow.
DEFAULT_EXPERIMENT = "xception_384"
_DATAFLOW_GROUP = cli.FlagGroup("Dataflow placement (edit for your project)", (
    "project", "region", "temp_location", "staging_location", "sdk_container_image", "build_image", "setup_file",
    "machine_type", "worker_machine_type", "num_workers", "max_num_workers", "disk_size_gb", "experiments",
    "dataflow_service_options", "job_name", "service_account_email", "subnetwork", "no_use_public_ips"))
_SCALING_GROUP = cli.FlagGroup("Scaling and preemption", ("per_replica_batch_size", "steps_per_loop", "max_restarts"))
_RUN_GROUP = cli.FlagGroup("Run", ("dry_run",))


def _define_dry_run(fv: flags.FlagValues) -> None:
  flags.DEFINE_boolean("dry_run", False, "Print the command or spec; run nothing.", flag_values=fv)


def _define_dataflow_flags(fv: flags.FlagValues, *, default_machine_type: str) -> None:
  def string(name, help_text, default=None):
    flags.DEFINE_string(name, default, help_text, flag_values=fv)

  string("project", "GCP project that runs the job (required).")
  string("region", "Dataflow region such as us-central1 (required).")
  string("temp_location", "gs:// prefix for temporary files (required).")
  string("staging_location", "gs:// prefix for staged packages (default gs://<temp bucket>/staging).")
  string("sdk_container_image", "Worker image with this package (launch/Dockerfile); required unless --setup_file.")
  flags.DEFINE_enum("build_image", None, dataflow.IMAGE_VARIANTS, "First docker build and push "
                    "--sdk_container_image from launch/Dockerfile (cpu or gpu).", flag_values=fv)
  string("setup_file", "setup.py that Dataflow pip-installs on every worker at start-up instead of an image (slow; "
         "not with --no_use_public_ips).")
  string("machine_type", "Worker machine type.", default_machine_type)
  flags.DEFINE_alias("worker_machine_type", "machine_type", flag_values=fv)
  flags.DEFINE_integer("num_workers", None, "Initial worker count (default: Dataflow chooses).", flag_values=fv)
  flags.DEFINE_integer("max_num_workers", 10, "Autoscaling ceiling; bounds the cost of a run.", flag_values=fv)
  flags.DEFINE_integer("disk_size_gb", None, "Worker boot disk size in GB.", flag_values=fv)
  flags.DEFINE_multi_string("experiments", [], "A Dataflow --experiments value", flag_values=fv)
  flags.DEFINE_multi_string("dataflow_service_options", [], "A Dataflow service option", flag_values=fv)
  string("job_name", "Dataflow job name: lowercase letters, digits and dashes.")
  string("service_account_email", "Worker service account.")
  string("subnetwork", "Worker subnetwork (regions/R/subnetworks/S or a full URL).")
  flags.DEFINE_boolean("no_use_public_ips", False, "Workers without external IPs (needs Private Google Access and "
                       "--sdk_container_image).", flag_values=fv)


def _dataflow_options(args: flags.FlagValues) -> dataflow.DataflowOptions:
  return dataflow.DataflowOptions(
      project=args.project, region=args.region, temp_location=args.temp_location,
      staging_location=args.staging_location, setup_file=args.setup_file,
      sdk_container_image=args.sdk_container_image, machine_type=args.machine_type,
      num_workers=args.num_workers, max_num_workers=args.max_num_workers, disk_size_gb=args.disk_size_gb,
      experiments=args.experiments, service_options=args.dataflow_service_options, job_name=args.job_name,
      service_account_email=args.service_account_email, subnetwork=args.subnetwork,
      no_use_public_ips=args.no_use_public_ips)


def _with_job_args(command: list[str], args: flags.FlagValues, beam_args: list[str]) -> list[str]:
  """The job's command plus the Beam options passed through, and --verbosity when not the default."""
  if any(arg.split("=", 1)[0] == "--runner" for arg in beam_args):
    raise cli.UsageError("--runner: the dataflow targets always run on DataflowRunner; run boneage-preprocess or "
                         "boneage-score directly for another runner")
  verbosity = [] if args.verbosity == cli.DEFAULT_VERBOSITY else [f"--verbosity={args.verbosity}"]
  return [command[0], *verbosity, *command[1:], *beam_args]


def _run(command: list[str]) -> int:
  try:
    return subprocess.call(command)
  except FileNotFoundError as error:
    raise common.LaunchError(f"{command[0]} not found on PATH (install it, or use --dry_run to print the "
                             "command)") from error


def _print_or_run(command: list[str], dry_run: bool) -> int:
  if dry_run:
    print(shlex.join(command))
    return 0
  return _run(command)


def _build_image_then(command: list[str], args: flags.FlagValues) -> int:
  """Runs (or prints) the image build and push first when --build_image asks for it, then the job."""
  commands = (dataflow.image_build_commands(args.sdk_container_image, args.build_image) if args.build_image
              else []) + [command]
  for step in commands:
    code = _print_or_run(step, args.dry_run)
    if code:
      return code
  return 0


def _dataflow_preprocess(args: flags.FlagValues, beam_args: list[str]) -> int:
  command = dataflow.preprocess_command(
      manual_dir=args.manual_dir, data_dir=args.data_dir, config=args.config, rejects=args.rejects,
      dataset_module=args.dataset_module, options=_dataflow_options(args))
  return _build_image_then(_with_job_args(command, args, beam_args), args)


def _dataflow_score(args: flags.FlagValues, beam_args: list[str]) -> int:
  command = dataflow.score_command(
      model_dir=args.model_dir, inputs=args.inputs, output_dir=args.output_dir,
      metadata_csv=args.metadata_csv, gradcam=None if args.gradcam is None else args.gradcam == "true",
      unknown_sex=args.unknown_sex, worker_accelerator=args.worker_accelerator,
      worker_accelerator_count=args.worker_accelerator_count, batch_size=args.batch_size,
      options=_dataflow_options(args))
  return _build_image_then(_with_job_args(command, args, beam_args), args)


def _write_spec(spec: dict, path: str) -> None:
  """Saves the spec for gcloud --config; JSON is valid YAML, so PyYAML is optional."""
  try:
    import yaml  # pylint: disable=g-import-not-at-top
    text = yaml.safe_dump(spec, sort_keys=False)
  except ImportError:
    text = json.dumps(spec, indent=2)
  pathlib.Path(path).write_text(text)


def _vertex_train(args: flags.FlagValues, unused: list[str]) -> int:
  del unused  # no extra arguments
  job = vertex.VertexTrainJob(
      mode=args.mode, image_uri=args.image_uri, data_dir=args.data_dir, model_dir=args.model_dir,
      experiment=args.experiment, precision=args.precision, machine_type=args.machine_type,
      accelerator_type=args.accelerator_type, accelerator_count=args.accelerator_count,
      replica_count=args.replica_count, tpu_topology=args.tpu_topology,
      config_overrides=args.config_override, service_account=args.service_account,
      per_replica_batch_size=args.per_replica_batch_size, steps_per_loop=args.steps_per_loop,
      scheduling_strategy=args.scheduling_strategy, max_wait_hours=args.max_wait_hours,
      timeout_hours=args.timeout_hours, max_restarts=args.max_restarts)
  spec = vertex.custom_job_spec(job)
  display_name = args.display_name or f"boneage-{args.mode.replace('_', '-')}"
  gcloud = vertex.gcloud_command(project=args.project, region=args.region, display_name=display_name,
                                 config_file=args.config_file)
  if args.dry_run:
    print(json.dumps(spec, indent=2))
    print()
    print(shlex.join(gcloud))
    return 0
  if args.submit:
    submitted = vertex.submit(spec, project=args.project, region=args.region, display_name=display_name,
                              staging_bucket=args.staging_bucket)
    print(f"submitted {submitted.resource_name}")
    return 0
  _write_spec(spec, args.config_file)
  return _run(gcloud)


def _tpu_vm_scaling_flags(args: flags.FlagValues) -> list[str]:
  """launch/tpu_vm.sh flags for the batch per replica, steps per loop, reruns and following the log."""
  common.scaling_overrides(per_replica_batch_size=args.per_replica_batch_size,
                           steps_per_loop=args.steps_per_loop)  # checks them before bash does
  common.require_positive(args.max_restarts, "--max_restarts")
  common.require_positive(args.log_sync_seconds, "--log_sync_seconds")
  extra = common.flag("per_replica_batch_size", args.per_replica_batch_size)
  extra += common.flag("steps_per_loop", args.steps_per_loop)
  extra += [f"--max_restarts={args.max_restarts}", f"--log_sync_seconds={args.log_sync_seconds}"]
  if args.follow:
    extra.append("--follow")
  return extra


def _tpu_vm(args: flags.FlagValues, unused: list[str]) -> int:
  del unused  # no extra arguments
  command = local.tpu_vm_command(
      project=args.project, zone=args.zone, tpu_name=args.tpu_name, data_dir=args.data_dir,
      model_dir=args.model_dir, experiment=args.experiment, accelerator_type=args.accelerator_type,
      runtime_version=args.runtime_version, precision=args.precision, config_overrides=args.config_override,
      source_dir=args.source_dir, python=args.python, skip_create=args.skip_create,
      delete_after=args.delete_after, dry_run=args.dry_run)
  command += _tpu_vm_scaling_flags(args)
  if not args.dry_run:
    return _run(command)
  # The script's own dry run prints the gcloud lines; it runs nothing remote.
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  sys.stdout.write(result.stdout)
  sys.stderr.write(result.stderr)
  return result.returncode


def _local_multiworker(args: flags.FlagValues, forwarded: list[str]) -> int:
  return _print_or_run(local.local_multiworker_command(forwarded), args.dry_run)


def _tensorboard(args: flags.FlagValues, unused: list[str]) -> int:
  del unused  # no extra arguments
  command = local.tensorboard_command(args.model_dir, port=args.port, bind_all=args.bind_all)
  if not args.dry_run:
    local.check_local_model_dir(args.model_dir)
  return _print_or_run(command, args.dry_run)


def _define_scaling_flags(fv: flags.FlagValues) -> None:
  """Flags shared by vertex-train and tpu-vm: batch per replica, steps per loop, reruns after preemption."""
  flags.DEFINE_integer("per_replica_batch_size", None, "Trainer data.per_replica_batch_size (global = this x "
                       "replicas; default: the experiment's).", flag_values=fv)
  flags.DEFINE_integer("steps_per_loop", None, "Trainer train.steps_per_loop: steps per tf.function call (default: "
                       "the experiment's).", flag_values=fv)
  flags.DEFINE_integer("max_restarts", common.DEFAULT_MAX_RESTARTS, f"Reruns after the trainer exits "
                       f"{common.PREEMPTED_EXIT_CODE} (preempted) before giving up.", flag_values=fv)


def _define_dataflow_preprocess(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("manual_dir", None, "gs:// folder with the RSNA download (required).", flag_values=fv)
  flags.DEFINE_string("data_dir", None, "gs:// TFDS data dir to write (required).", flag_values=fv)
  flags.DEFINE_string("config", "384px", "Builder config: 128px, 384px or 512px.", flag_values=fv)
  flags.DEFINE_string("rejects", None, "gs:// JSON-lines file of rejected inputs.", flag_values=fv)
  flags.DEFINE_string("dataset_module", None, "Module registering the builder (boneage-preprocess's default).",
                      flag_values=fv)
  _define_dataflow_flags(fv, default_machine_type="n1-highmem-4")


def _define_dataflow_score(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("model_dir", None, "gs:// export dir or model dir holding export/ (required).", flag_values=fv)
  flags.DEFINE_string("inputs", None, "Comma-separated gs:// patterns of PNG/JPEG/DICOM files and archives "
                      "(required).", flag_values=fv)
  flags.DEFINE_string("output_dir", None, "gs:// folder for predictions and rejects (required).", flag_values=fv)
  flags.DEFINE_string("metadata_csv", None, "gs:// CSV with sex/dates for images without DICOM tags.", flag_values=fv)
  flags.DEFINE_enum("gradcam", None, ("true", "false"), "Write Grad-CAM overlays.", flag_values=fv)
  flags.DEFINE_string("unknown_sex", None, "Policy for unknown sex, passed to boneage-score.", flag_values=fv)
  flags.DEFINE_string("worker_accelerator", None, "Dataflow GPU type such as nvidia-l4 (needs --sdk_container_image).",
                      flag_values=fv)
  flags.DEFINE_integer("worker_accelerator_count", 1, "GPUs per worker; 1 (one shared model copy per worker).",
                       flag_values=fv)
  flags.DEFINE_integer("batch_size", None, f"Images per model call (default: {dataflow.DEFAULT_GPU_BATCH_SIZE} with "
                       "--worker_accelerator, else boneage-score's).", flag_values=fv)
  _define_dataflow_flags(fv, default_machine_type="n1-standard-4")


def _define_vertex_train(fv: flags.FlagValues) -> None:
  def string(name, help_text, default=None):
    flags.DEFINE_string(name, default, help_text, flag_values=fv)

  flags.DEFINE_enum("mode", "single_gpu", vertex.MODES, "Replica layout.", flag_values=fv)
  string("project", "GCP project (required).")
  string("region", "Vertex AI region such as us-central1 (required).")
  string("image_uri", "Training container with this package (required; see launch/Dockerfile).")
  string("data_dir", "gs:// TFDS data dir (required).")
  string("model_dir", "gs:// model dir (required).")
  string("experiment", "Trainer experiment name.", DEFAULT_EXPERIMENT)
  flags.DEFINE_enum("precision", None, common.PRECISIONS, "Default: mixed_float16 on GPU, mixed_bfloat16 on TPU.",
                    flag_values=fv)
  flags.DEFINE_multi_string("config_override", [], "A trainer config override, key=value", flag_values=fv)
  string("machine_type", "Machine type (default: the mode's).")
  string("accelerator_type", "NVIDIA_L4, NVIDIA_TESLA_T4, NVIDIA_H100_80GB, TPU_V3, ...")
  flags.DEFINE_integer("accelerator_count", None, "Accelerators per replica (default: the mode's).", flag_values=fv)
  flags.DEFINE_integer("replica_count", None, "multi_worker: total replicas (chief + workers).", flag_values=fv)
  string("tpu_topology", "TPU v5e topology (derived from --machine_type by default).")
  _define_scaling_flags(fv)
  flags.DEFINE_enum("scheduling_strategy", None, vertex.SCHEDULING_STRATEGIES, "STANDARD (on demand), SPOT "
                    "(preemptible; resumes by itself) or FLEX_START.", flag_values=fv)
  flags.DEFINE_float("max_wait_hours", None, "FLEX_START: how long to wait for the machines.", flag_values=fv)
  flags.DEFINE_float("timeout_hours", None, "Longest run (Vertex AI default: 7 days).", flag_values=fv)
  string("service_account", "Service account the job runs as.")
  string("display_name", "Job name in the console (default: boneage-<mode>).")
  string("config_file", "Where the spec is saved for gcloud.", "vertex_custom_job.yaml")
  flags.DEFINE_boolean("submit", False, "Create the job with google-cloud-aiplatform instead of gcloud.",
                       flag_values=fv)
  string("staging_bucket", "gs:// bucket for the SDK (with --submit).")
  _define_dry_run(fv)


def _define_tpu_vm(fv: flags.FlagValues) -> None:
  def string(name, help_text, default=None):
    flags.DEFINE_string(name, default, help_text, flag_values=fv)

  string("project", "GCP project that owns the TPU VM (required).")
  string("zone", "Zone that offers the TPU type, such as us-west4-a for v5e (required).")
  string("tpu_name", "TPU VM to create or reuse (required).")
  string("accelerator_type", "TPU type.", "v5litepod-8")
  string("runtime_version", "TPU VM software version.", "v2-alpha-tpuv5-lite")
  string("data_dir", "gs:// TFDS data dir (required).")
  string("model_dir", "gs:// model dir (required).")
  string("experiment", "Trainer experiment name.", DEFAULT_EXPERIMENT)
  flags.DEFINE_enum("precision", "mixed_bfloat16", common.PRECISIONS, "Trainer precision.", flag_values=fv)
  flags.DEFINE_multi_string("config_override", [], "A trainer config override, key=value", flag_values=fv)
  string("source_dir", "Repository root to copy to the TPU hosts.", ".")
  string("python", "Interpreter for the venv on the TPU hosts.", "python3.11")
  flags.DEFINE_boolean("skip_create", False, "Reuse an existing TPU VM.", flag_values=fv)
  flags.DEFINE_boolean("delete_after", False, "Print the command that deletes the TPU VM once training has "
                       "finished.", flag_values=fv)
  _define_scaling_flags(fv)
  flags.DEFINE_integer("log_sync_seconds", 60, "How often each host copies its training log to "
                       "<model_dir>/host_logs/.", flag_values=fv)
  flags.DEFINE_boolean("follow", False, "After starting training, follow worker 0's log.", flag_values=fv)
  _define_dry_run(fv)


def _define_tensorboard(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("model_dir", None, "Local folder or gs:// URI whose logs/ to show (required).", flag_values=fv)
  flags.DEFINE_integer("port", 6006, "Local port to serve on.", flag_values=fv)
  flags.DEFINE_boolean("bind_all", False, "Serve on every interface (from a VM, say), not only localhost.",
                       flag_values=fv)
  _define_dry_run(fv)


@dataclasses.dataclass(frozen=True)
class Target:
  """One boneage-launch target: its flags, their --help groups, and what it runs.

  extra: what the target does with arguments its flags do not name: "none" (usage error), "beam" (Beam options
  handed to the job, each checked against Beam's parser) or "forward" (what follows `--`, untouched).
  """
  summary: str
  define: Callable[[flags.FlagValues], None]
  groups: tuple[cli.FlagGroup, ...]
  run: Callable[[flags.FlagValues, list[str]], int]
  extra: str = "none"
  usage: str = "[flags] [--dry_run]"


def _dataflow_define(define_job):
  def define(fv):
    define_job(fv)
    _define_dry_run(fv)
  return define


TARGETS = {
    "dataflow-preprocess": Target(
        "build the TFDS dataset on Dataflow (boneage-preprocess)", _dataflow_define(_define_dataflow_preprocess),
        (cli.FlagGroup("Dataset", ("manual_dir", "data_dir", "config", "rejects", "dataset_module")),
         _DATAFLOW_GROUP, _RUN_GROUP), _dataflow_preprocess, "beam", "[flags] [Beam options] [--dry_run]"),
    "dataflow-score": Target(
        "batch-score radiographs on Dataflow (boneage-score)", _dataflow_define(_define_dataflow_score),
        (cli.FlagGroup("Scoring", ("model_dir", "inputs", "output_dir", "metadata_csv", "gradcam", "unknown_sex",
                                   "batch_size")),
         cli.FlagGroup("GPU workers", ("worker_accelerator", "worker_accelerator_count")),
         _DATAFLOW_GROUP, _RUN_GROUP), _dataflow_score, "beam", "[flags] [Beam options] [--dry_run]"),
    "vertex-train": Target(
        "Vertex AI custom training job: --mode=single_gpu|multi_gpu|multi_worker|tpu", _define_vertex_train,
        (cli.FlagGroup("Job", ("mode", "project", "region", "image_uri", "service_account", "display_name")),
         cli.FlagGroup("Training", ("data_dir", "model_dir", "experiment", "precision", "config_override")),
         cli.FlagGroup("Machines", ("machine_type", "accelerator_type", "accelerator_count", "replica_count",
                                    "tpu_topology")),
         _SCALING_GROUP,
         cli.FlagGroup("Scheduling", ("scheduling_strategy", "max_wait_hours", "timeout_hours")),
         cli.FlagGroup("Submission", ("config_file", "submit", "staging_bucket", "dry_run"))), _vertex_train),
    "tpu-vm": Target(
        "create a Cloud TPU VM and train on it (launch/tpu_vm.sh)", _define_tpu_vm,
        (cli.FlagGroup("TPU VM", ("project", "zone", "tpu_name", "accelerator_type", "runtime_version", "skip_create",
                                  "delete_after")),
         cli.FlagGroup("Training", ("data_dir", "model_dir", "experiment", "precision", "config_override",
                                    "source_dir", "python")),
         _SCALING_GROUP, cli.FlagGroup("Logs", ("log_sync_seconds", "follow")), _RUN_GROUP), _tpu_vm),
    "local-multiworker": Target(
        "multi-worker training on this machine (launch/local_multiworker.py)", _define_dry_run, (_RUN_GROUP,),
        _local_multiworker, "forward", "[--dry_run] -- [flags of launch/local_multiworker.py]"),
    "tensorboard": Target(
        "TensorBoard over <model_dir>/logs", _define_tensorboard,
        (cli.FlagGroup("TensorBoard", ("model_dir", "port", "bind_all")), _RUN_GROUP), _tensorboard),
}


def top_help() -> str:
  """boneage-launch --help: the targets, then the common flags (bone_age.cli's help text)."""
  fv = flags.FlagValues()
  cli.define_verbosity(fv)
  usage, rest = cli.help_text(_PROG, "TARGET [flags] [--dry_run]", fv, ()).split("\n", 1)
  width = max(len(name) for name in TARGETS)
  targets = [f"  {name:<{width}}  {target.summary}" for name, target in TARGETS.items()]
  return "\n".join([usage, "", f"Targets ({_PROG} TARGET --help lists a target's flags):", *targets]) + "\n" + rest


def _split_target(args: list[str]) -> tuple[str, list[str]]:
  """(target, the other arguments); only --verbosity and --help may come before the target."""
  i = 0
  while i < len(args) and args[i].startswith("-"):
    if args[i] in cli.HELP_FLAGS:
      print(top_help())
      raise SystemExit(0)
    if args[i] == "--verbosity":
      i += 2
    elif args[i].startswith("--verbosity="):
      i += 1
    else:
      raise cli.UsageError(f"{args[i]!r} before the target: name the target first ({_PROG} TARGET [flags]; see "
                           f"{_PROG} --help)")
  if i >= len(args):
    raise cli.UsageError(f"a target is required: one of {', '.join(TARGETS)} (see {_PROG} --help)")
  name = args[i]
  if name not in TARGETS:
    raise cli.UsageError(f"unknown target {name!r}: one of {', '.join(TARGETS)} (see {_PROG} --help)")
  return name, args[:i] + args[i + 1:]


def _main(argv: list[str]) -> int:
  name, args = _split_target(argv[1:])
  target = TARGETS[name]
  forwarded: list[str] = []
  if target.extra == "forward" and "--" in args:
    args, forwarded = args[:args.index("--")], args[args.index("--") + 1:]
  fv = flags.FlagValues()
  target.define(fv)
  rest = cli.parse(f"{_PROG} {name}", target.usage, fv, [_PROG, *args], target.groups,
                   extra_args="beam" if target.extra == "beam" else "none")
  return target.run(fv, forwarded if target.extra == "forward" else rest)


def main(argv: list[str] | None = None) -> int:
  """Entry point of `boneage-launch` (argv: a full command line); returns 0, exits non-zero on failure.

  A usage mistake or an unusable parameter (common.LaunchError) exits 2 with one line on stderr.
  """
  argv = list(sys.argv if argv is None else argv)
  cli.quiet_start(argv)
  cli.run_main(_PROG, lambda: _main(argv), argv, user_errors=(common.LaunchError,))
  return 0


if __name__ == "__main__":
  main()
