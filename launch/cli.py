"""`boneage-launch <target> [flags] [--dry_run]`: print or run a real workload.

Targets:
  dataflow-preprocess  build the TFDS dataset on Dataflow (boneage-preprocess)
  dataflow-score       batch-score radiographs on Dataflow (boneage-score)
  vertex-train         Vertex AI custom job: --mode=single_gpu|multi_gpu|multi_worker|tpu
  tpu-vm               create a TPU VM and train on it (launch/tpu_vm.sh)
  local-multiworker    multi-worker training on this machine (launch/local_multiworker.py)
  tensorboard          TensorBoard over <model_dir>/logs

With --dry_run nothing runs: commands are printed shell-quoted on one line,
the Vertex AI job as its CustomJobSpec JSON followed by the gcloud command.
"""

import argparse
import json
import pathlib
import shlex
import subprocess
import sys

from launch import common
from launch import dataflow
from launch import local
from launch import vertex

# The trainer's registered recipe for real runs (trainer/experiments.py); named
# here, not imported, so launching never needs TensorFlow.
DEFAULT_EXPERIMENT = "xception_384"


def _add_dataflow_flags(parser: argparse.ArgumentParser, *, default_machine_type: str) -> None:
  group = parser.add_argument_group("Dataflow placement (edit for your project)")
  group.add_argument("--project", help="GCP project that runs the job (required)")
  group.add_argument("--region", help="Dataflow region, e.g. us-central1 (required)")
  group.add_argument("--temp_location", help="gs:// prefix for temporary files (required)")
  group.add_argument("--staging_location", help="gs:// prefix for staged packages (default gs://<temp bucket>/staging)")
  group.add_argument("--sdk_container_image",
                     help="worker image with this package (launch/Dockerfile); required unless --setup_file")
  group.add_argument("--build_image", choices=dataflow.IMAGE_VARIANTS,
                     help="first docker build and push --sdk_container_image from launch/Dockerfile (cpu or gpu)")
  group.add_argument("--setup_file", help="setup.py Dataflow pip-installs on every worker at start-up instead of "
                     "an image (slow; not with --no_use_public_ips)")
  group.add_argument("--machine_type", "--worker_machine_type", dest="machine_type", default=default_machine_type)
  group.add_argument("--num_workers", type=int)
  group.add_argument("--max_num_workers", type=int, default=10)
  group.add_argument("--disk_size_gb", type=int)
  group.add_argument("--experiments", action="append", default=[], help="repeatable")
  group.add_argument("--dataflow_service_options", action="append", default=[], help="repeatable")
  group.add_argument("--job_name")
  group.add_argument("--service_account_email")
  group.add_argument("--subnetwork")
  group.add_argument("--no_use_public_ips", action="store_true")


def _dataflow_options(args: argparse.Namespace) -> dataflow.DataflowOptions:
  return dataflow.DataflowOptions(
      project=args.project, region=args.region, temp_location=args.temp_location,
      staging_location=args.staging_location, setup_file=args.setup_file,
      sdk_container_image=args.sdk_container_image, machine_type=args.machine_type,
      num_workers=args.num_workers, max_num_workers=args.max_num_workers, disk_size_gb=args.disk_size_gb,
      experiments=args.experiments, service_options=args.dataflow_service_options, job_name=args.job_name,
      service_account_email=args.service_account_email, subnetwork=args.subnetwork,
      no_use_public_ips=args.no_use_public_ips)


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


def _build_image_then(command: list[str], args: argparse.Namespace) -> int:
  """Runs (or prints) the image build and push first when --build_image asks for it, then the job."""
  commands = (dataflow.image_build_commands(args.sdk_container_image, args.build_image) if args.build_image
              else []) + [command]
  for step in commands:
    code = _print_or_run(step, args.dry_run)
    if code:
      return code
  return 0


def _dataflow_preprocess(args: argparse.Namespace) -> int:
  command = dataflow.preprocess_command(
      manual_dir=args.manual_dir, data_dir=args.data_dir, config=args.config, rejects=args.rejects,
      dataset_module=args.dataset_module, options=_dataflow_options(args))
  return _build_image_then(command, args)


def _dataflow_score(args: argparse.Namespace) -> int:
  command = dataflow.score_command(
      model_dir=args.model_dir, inputs=args.inputs, output_dir=args.output_dir,
      metadata_csv=args.metadata_csv, gradcam=None if args.gradcam is None else args.gradcam == "true",
      unknown_sex=args.unknown_sex, worker_accelerator=args.worker_accelerator,
      worker_accelerator_count=args.worker_accelerator_count, batch_size=args.batch_size,
      options=_dataflow_options(args))
  return _build_image_then(command, args)


def _write_spec(spec: dict, path: str) -> None:
  """Saves the spec for gcloud --config; JSON is valid YAML, so PyYAML is optional."""
  try:
    import yaml  # pylint: disable=g-import-not-at-top
    text = yaml.safe_dump(spec, sort_keys=False)
  except ImportError:
    text = json.dumps(spec, indent=2)
  pathlib.Path(path).write_text(text)


def _vertex_train(args: argparse.Namespace) -> int:
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


def _tpu_vm_scaling_flags(args: argparse.Namespace) -> list[str]:
  """launch/tpu_vm.sh flags for the batch per replica, steps per loop, reruns and following the log."""
  common.scaling_overrides(per_replica_batch_size=args.per_replica_batch_size,
                           steps_per_loop=args.steps_per_loop)  # checks them before bash does
  common.require_positive(args.max_restarts, "--max_restarts")
  common.require_positive(args.log_sync_seconds, "--log_sync_seconds")
  flags = common.flag("per_replica_batch_size", args.per_replica_batch_size)
  flags += common.flag("steps_per_loop", args.steps_per_loop)
  flags += [f"--max_restarts={args.max_restarts}", f"--log_sync_seconds={args.log_sync_seconds}"]
  if args.follow:
    flags.append("--follow")
  return flags


def _tpu_vm(args: argparse.Namespace) -> int:
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


def _local_multiworker(args: argparse.Namespace) -> int:
  forwarded = list(args.forwarded)
  if forwarded[:1] == ["--"]:
    forwarded = forwarded[1:]
  return _print_or_run(local.local_multiworker_command(forwarded), args.dry_run)


def _tensorboard(args: argparse.Namespace) -> int:
  command = local.tensorboard_command(args.model_dir, port=args.port, bind_all=args.bind_all)
  if not args.dry_run:
    local.check_local_model_dir(args.model_dir)
  return _print_or_run(command, args.dry_run)


def _add_scaling_flags(parser: argparse.ArgumentParser) -> None:
  """Flags shared by vertex-train and tpu-vm: batch per replica, steps per loop, reruns after preemption."""
  parser.add_argument("--per_replica_batch_size", type=int,
                      help="trainer data.per_replica_batch_size (global = this x replicas; default: the experiment's)")
  parser.add_argument("--steps_per_loop", type=int,
                      help="trainer train.steps_per_loop: steps per tf.function call (default: the experiment's)")
  parser.add_argument("--max_restarts", type=int, default=common.DEFAULT_MAX_RESTARTS,
                      help=f"reruns after the trainer exits {common.PREEMPTED_EXIT_CODE} (preempted) before giving up")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """One line per flag where it fits, so each target's --help stays short."""

  def __init__(self, prog):
    super().__init__(prog, width=120, max_help_position=44)


class _OneLineErrors(argparse.ArgumentParser):
  """argparse whose usage mistakes are one stderr line and exit 2, as every boneage-* command's are.

  A target's usage line says `[flags]` instead of repeating every flag; --help lists them.
  """

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", _HelpFormatter)
    if "prog" in kwargs and " " in kwargs["prog"]:
      kwargs.setdefault("usage", "%(prog)s [flags]")
    super().__init__(*args, **kwargs)

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
  common_flags = argparse.ArgumentParser(add_help=False)
  common_flags.add_argument("--dry_run", action="store_true", help="print the command or spec; run nothing")
  parser = _OneLineErrors(prog="boneage-launch", description=__doc__)
  targets = parser.add_subparsers(dest="target", required=True, metavar="target", parser_class=_OneLineErrors)

  sub = targets.add_parser("dataflow-preprocess", parents=[common_flags],
                           help="build the TFDS dataset on Dataflow")
  sub.add_argument("--manual_dir", help="gs:// folder with the RSNA download (required)")
  sub.add_argument("--data_dir", help="gs:// TFDS data dir to write (required)")
  sub.add_argument("--config", default="384px", help="builder config: 128px, 384px or 512px")
  sub.add_argument("--rejects", help="gs:// JSON-lines file of rejected inputs")
  sub.add_argument("--dataset_module", help="module registering the builder (boneage-preprocess default)")
  _add_dataflow_flags(sub, default_machine_type="n1-highmem-4")
  sub.set_defaults(run=_dataflow_preprocess, parser=sub)

  sub = targets.add_parser("dataflow-score", parents=[common_flags], help="batch-score radiographs on Dataflow")
  sub.add_argument("--model_dir", help="gs:// export dir or model dir holding export/ (required)")
  sub.add_argument("--inputs", help="comma-separated gs:// patterns of PNG/JPEG/DICOM files (required)")
  sub.add_argument("--output_dir", help="gs:// folder for predictions and rejects (required)")
  sub.add_argument("--metadata_csv", help="gs:// CSV with sex/dates for images without DICOM tags")
  sub.add_argument("--gradcam", choices=("true", "false"), help="write Grad-CAM heatmaps")
  sub.add_argument("--unknown_sex", help="policy for unknown sex, passed to boneage-score")
  sub.add_argument("--worker_accelerator", help="Dataflow GPU type, e.g. nvidia-l4 (needs --sdk_container_image)")
  sub.add_argument("--worker_accelerator_count", type=int, default=1, help="GPUs per worker; 1 (one shared model "
                   "copy per worker)")
  sub.add_argument("--batch_size", type=int, help=f"images per model call (default: "
                   f"{dataflow.DEFAULT_GPU_BATCH_SIZE} with --worker_accelerator, else boneage-score's)")
  _add_dataflow_flags(sub, default_machine_type="n1-standard-4")
  sub.set_defaults(run=_dataflow_score, parser=sub)

  sub = targets.add_parser("vertex-train", parents=[common_flags], help="Vertex AI custom training job")
  sub.add_argument("--mode", choices=vertex.MODES, default="single_gpu")
  sub.add_argument("--project", help="GCP project (required)")
  sub.add_argument("--region", help="Vertex AI region, e.g. us-central1 (required)")
  sub.add_argument("--image_uri", help="training container with this package (required; see launch/Dockerfile)")
  sub.add_argument("--data_dir", help="gs:// TFDS data dir (required)")
  sub.add_argument("--model_dir", help="gs:// model dir (required)")
  sub.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="trainer experiment name")
  sub.add_argument("--precision", choices=common.PRECISIONS, help="default: mixed_float16 on GPU, mixed_bfloat16 on TPU")
  sub.add_argument("--machine_type")
  sub.add_argument("--accelerator_type", help="NVIDIA_L4, NVIDIA_TESLA_T4, NVIDIA_H100_80GB, TPU_V3, ...")
  sub.add_argument("--accelerator_count", type=int)
  sub.add_argument("--replica_count", type=int, help="multi_worker: total replicas (chief + workers)")
  sub.add_argument("--tpu_topology", help="TPU v5e topology (derived from --machine_type by default)")
  sub.add_argument("--config_override", action="append", default=[], help="key=value, repeatable")
  sub.add_argument("--service_account")
  _add_scaling_flags(sub)
  sub.add_argument("--scheduling_strategy", choices=vertex.SCHEDULING_STRATEGIES,
                   help="STANDARD (on demand), SPOT (preemptible; resumes by itself) or FLEX_START")
  sub.add_argument("--max_wait_hours", type=float, help="FLEX_START: how long to wait for the machines")
  sub.add_argument("--timeout_hours", type=float, help="longest run (Vertex AI default: 7 days)")
  sub.add_argument("--display_name")
  sub.add_argument("--config_file", default="vertex_custom_job.yaml", help="where the spec is saved for gcloud")
  sub.add_argument("--submit", action="store_true", help="create the job with google-cloud-aiplatform")
  sub.add_argument("--staging_bucket", help="gs:// bucket for the SDK (with --submit)")
  sub.set_defaults(run=_vertex_train, parser=sub)

  sub = targets.add_parser("tpu-vm", parents=[common_flags], help="train on a Cloud TPU VM")
  sub.add_argument("--project")
  sub.add_argument("--zone")
  sub.add_argument("--tpu_name")
  sub.add_argument("--accelerator_type", default="v5litepod-8")
  sub.add_argument("--runtime_version", default="v2-alpha-tpuv5-lite")
  sub.add_argument("--data_dir")
  sub.add_argument("--model_dir")
  sub.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="trainer experiment name")
  sub.add_argument("--precision", choices=common.PRECISIONS, default="mixed_bfloat16")
  sub.add_argument("--config_override", action="append", default=[], help="key=value, repeatable")
  sub.add_argument("--source_dir", default=".", help="repository root to copy to the TPU hosts")
  sub.add_argument("--python", default="python3.11", help="interpreter for the venv on the TPU hosts")
  sub.add_argument("--skip_create", action="store_true", help="reuse an existing TPU VM")
  sub.add_argument("--delete_after", action="store_true",
                   help="print the command that deletes the TPU VM once training has finished")
  _add_scaling_flags(sub)
  sub.add_argument("--log_sync_seconds", type=int, default=60,
                   help="how often each host copies its training log to <model_dir>/host_logs/")
  sub.add_argument("--follow", action="store_true", help="after starting training, follow worker 0's log")
  sub.set_defaults(run=_tpu_vm, parser=sub)

  sub = targets.add_parser("local-multiworker", parents=[common_flags],
                           help="multi-worker training on this machine; flags after -- are forwarded")
  sub.add_argument("forwarded", nargs=argparse.REMAINDER, help="-- then launch/local_multiworker.py flags")
  sub.set_defaults(run=_local_multiworker, parser=sub)

  sub = targets.add_parser("tensorboard", parents=[common_flags], help="TensorBoard over <model_dir>/logs")
  sub.add_argument("--model_dir", help="local folder or gs:// URI (required)")
  sub.add_argument("--port", type=int, default=6006)
  sub.add_argument("--bind_all", action="store_true")
  sub.set_defaults(run=_tensorboard, parser=sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  """Entry point of `boneage-launch`; returns the exit status."""
  args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
  try:
    return args.run(args)
  except common.LaunchError as error:
    # The flag name is in the message; argparse's full usage would bury it.
    args.parser.exit(2, f"{args.parser.prog}: error: {error}\n")
  return 2


if __name__ == "__main__":
  sys.exit(main())
