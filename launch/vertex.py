"""Vertex AI custom training jobs for boneage-train.

`custom_job_spec` returns a CustomJobSpec in the REST field names (camelCase),
which is what `gcloud ai custom-jobs create --config=FILE` reads (the file
must not use snake_case keys). `submit` converts the same spec to the
snake_case dicts google-cloud-aiplatform takes, so both paths launch the same
job.

Distributed layout (Vertex AI sets CLUSTER_SPEC and TF_CONFIG on every
replica from the pools' order): workerPoolSpecs[0] is the chief (exactly one
replica), workerPoolSpecs[1] holds the other workers. TensorFlow's
MultiWorkerMirroredStrategy reads TF_CONFIG, so the "chief" + "worker" tasks
form one all-reduce group; pools 2 and 3 (parameter servers, evaluator) stay
unused.

Preemption: every replica runs boneage-train under the restart-on-preemption
loop (common.restart_on_preemption_script), which reruns the trainer in place
when it checkpointed and exited with common.PREEMPTED_EXIT_CODE. When Vertex AI
itself restarts a worker (host maintenance, a reclaimed Spot VM),
`scheduling.restartJobOnWorkerRestart` restarts every replica together, so a
multi-worker all-reduce group re-forms, and each reruns the same command,
which resumes from the newest checkpoint in --model_dir.
"""

import dataclasses
import re

from launch import common

MODES = ("single_gpu", "multi_gpu", "multi_worker", "tpu")
TPU_ACCELERATORS = ("TPU_V2", "TPU_V3")
# cloud-tpu (v2/v3) hosts always carry 8 TPU cores.
CLOUD_TPU_CORES = 8
# TPU v5e hosts on Vertex AI: chips per host -> the single-host slice topology.
V5E_TOPOLOGY_BY_CHIPS = {1: "1x1", 4: "2x2", 8: "2x4"}
# G2 machine types come with a fixed number of L4 GPUs.
# Vertex AI Scheduling.strategy values: STANDARD (on demand), SPOT (preemptible,
# cheaper; preemption resumes as above), FLEX_START (Dynamic Workload Scheduler:
# waits up to maxWaitDuration for the machines).
SCHEDULING_STRATEGIES = ("STANDARD", "SPOT", "FLEX_START")
RESTART_LOOP_NAME = "restart-on-preemption"
G2_GPUS = {"g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1, "g2-standard-16": 1,
           "g2-standard-32": 1, "g2-standard-24": 2, "g2-standard-48": 4, "g2-standard-96": 8}


@dataclasses.dataclass(frozen=True)
class ModeDefaults:
  strategy: str
  precision: str
  machine_type: str
  accelerator_type: str | None
  accelerator_count: int
  replica_count: int


# L4 GPUs (G2 machines) are the cheapest current GPUs with bfloat16 and float16
# tensor cores; float16 keeps the recipe portable to T4/V100 if the machine is
# changed. TPUs compute in bfloat16 natively.
DEFAULTS = {
    "single_gpu": ModeDefaults("default", "mixed_float16", "g2-standard-8", "NVIDIA_L4", 1, 1),
    "multi_gpu": ModeDefaults("mirrored", "mixed_float16", "g2-standard-48", "NVIDIA_L4", 4, 1),
    "multi_worker": ModeDefaults("multi_worker", "mixed_float16", "g2-standard-8", "NVIDIA_L4", 1, 2),
    "tpu": ModeDefaults("tpu", "mixed_bfloat16", "ct5lp-hightpu-4t", None, 0, 1),
}


@dataclasses.dataclass
class VertexTrainJob:
  """One Vertex AI training run of boneage-train.

  Attributes:
    mode: single_gpu | multi_gpu | multi_worker | tpu.
    image_uri: Training container with this package installed (see launch/Dockerfile).
    data_dir: TFDS data dir (gs:// or /gcs/...).
    model_dir: Output model dir (gs:// or /gcs/...); every replica gets the same one.
    experiment: Trainer experiment name.
    precision: Overrides the mode's default precision.
    machine_type, accelerator_type, accelerator_count: Override the mode's machine.
    replica_count: Total replicas (multi_worker only: chief + workers).
    tpu_topology: TPU v5e slice topology (derived from the machine type when None).
    config_overrides: key=value strings for the trainer.
    service_account: Service account the replicas run as.
    per_replica_batch_size: Trainer data.per_replica_batch_size (global = this x replicas).
    steps_per_loop: Trainer train.steps_per_loop (steps per tf.function call).
    scheduling_strategy: STANDARD | SPOT | FLEX_START (Vertex AI's default when None).
    max_wait_hours: FLEX_START only: how long to wait for the machines.
    timeout_hours: Longest the job may run (Vertex AI's default, 7 days, when None).
    max_restarts: Reruns in place after preemption exits before the replica gives up.
  """
  mode: str
  image_uri: str | None
  data_dir: str | None
  model_dir: str | None
  experiment: str | None
  precision: str | None = None
  machine_type: str | None = None
  accelerator_type: str | None = None
  accelerator_count: int | None = None
  replica_count: int | None = None
  tpu_topology: str | None = None
  config_overrides: list[str] = dataclasses.field(default_factory=list)
  service_account: str | None = None
  per_replica_batch_size: int | None = None
  steps_per_loop: int | None = None
  scheduling_strategy: str | None = None
  max_wait_hours: float | None = None
  timeout_hours: float | None = None
  max_restarts: int = common.DEFAULT_MAX_RESTARTS


def _gpu_machine_spec(job: VertexTrainJob, defaults: ModeDefaults) -> dict:
  machine_type = job.machine_type or defaults.machine_type
  accelerator_type = job.accelerator_type or defaults.accelerator_type
  if accelerator_type and not accelerator_type.startswith("NVIDIA_"):
    raise common.LaunchError(f"--accelerator_type for mode {job.mode} must be an NVIDIA_* GPU type "
                             f"(e.g. NVIDIA_L4, NVIDIA_TESLA_T4, NVIDIA_H100_80GB); got {accelerator_type!r}")
  count = job.accelerator_count
  if count is None:
    count = G2_GPUS.get(machine_type, defaults.accelerator_count)
  common.require_positive(count, "--accelerator_count")
  if job.mode == "multi_gpu" and count < 2:
    raise common.LaunchError("mode multi_gpu mirrors over the GPUs of one machine: "
                             f"--accelerator_count must be at least 2; got {count}")
  if machine_type in G2_GPUS and G2_GPUS[machine_type] != count:
    raise common.LaunchError(f"{machine_type} has exactly {G2_GPUS[machine_type]} L4 GPU(s); "
                             f"--accelerator_count={count} does not fit it")
  return {"machineType": machine_type, "acceleratorType": accelerator_type, "acceleratorCount": count}


def _tpu_machine_spec(job: VertexTrainJob, defaults: ModeDefaults) -> dict:
  machine_type = job.machine_type or defaults.machine_type
  if machine_type == "cloud-tpu":
    accelerator_type = job.accelerator_type or "TPU_V3"
    common.require_choice(accelerator_type, "--accelerator_type", TPU_ACCELERATORS)
    count = job.accelerator_count or CLOUD_TPU_CORES
    if count != CLOUD_TPU_CORES:
      raise common.LaunchError(f"cloud-tpu hosts have {CLOUD_TPU_CORES} TPU cores; "
                               f"--accelerator_count={count} would need a multi-host slice")
    return {"machineType": machine_type, "acceleratorType": accelerator_type, "acceleratorCount": count}
  match = re.fullmatch(r"ct5lp-hightpu-(\d+)t", machine_type)
  if not match or int(match.group(1)) not in V5E_TOPOLOGY_BY_CHIPS:
    raise common.LaunchError("--machine_type for mode tpu must be ct5lp-hightpu-1t/4t/8t (TPU v5e) or "
                             f"cloud-tpu (TPU v2/v3); got {machine_type!r}")
  expected_topology = V5E_TOPOLOGY_BY_CHIPS[int(match.group(1))]
  topology = job.tpu_topology or expected_topology
  # TPUStrategy with tpu="local" drives the chips of one host; a larger
  # topology would start several hosts that this trainer does not coordinate.
  if topology != expected_topology:
    raise common.LaunchError(f"{machine_type} is a single host with topology {expected_topology}; "
                             f"--tpu_topology={topology} would span several hosts")
  if job.accelerator_type or job.accelerator_count:
    raise common.LaunchError("TPU v5e machine types imply their chips: leave --accelerator_type and "
                             "--accelerator_count unset and choose ct5lp-hightpu-1t/4t/8t instead")
  return {"machineType": machine_type, "tpuTopology": topology}


def container_args(job: VertexTrainJob) -> list[str]:
  """The boneage-train flags every replica of the job runs with."""
  defaults = DEFAULTS[common.require_choice(job.mode, "--mode", MODES)]
  data_dir = common.require_remote_path(job.data_dir, "--data_dir", "Vertex AI replicas read the dataset there")
  model_dir = common.require_remote_path(job.model_dir, "--model_dir",
                                         "Vertex AI replicas write checkpoints, logs and the export there")
  return common.train_args(
      data_dir=data_dir, model_dir=model_dir, experiment=job.experiment, strategy=defaults.strategy,
      precision=job.precision or defaults.precision, tpu="local" if job.mode == "tpu" else None,
      config_overrides=[*common.scaling_overrides(per_replica_batch_size=job.per_replica_batch_size,
                                                  steps_per_loop=job.steps_per_loop),
                        *job.config_overrides])


def container_command(job: VertexTrainJob) -> list[str]:
  """containerSpec.command: boneage-train under the restart-on-preemption loop (args follow it)."""
  return ["bash", "-c", common.restart_on_preemption_script(job.max_restarts), RESTART_LOOP_NAME,
          "boneage-train"]


def _duration(hours: float, flag: str) -> str:
  """Hours -> a protobuf Duration string ("3600s"), which the REST API and gcloud read."""
  if hours <= 0:
    raise common.LaunchError(f"{flag} must be more than 0 hours; got {hours}")
  return f"{round(hours * 3600)}s"


def scheduling(job: VertexTrainJob) -> dict:
  """CustomJobSpec.scheduling: restart every replica when one restarts, plus the chosen strategy."""
  spec = {"restartJobOnWorkerRestart": True}
  if job.scheduling_strategy is not None:
    spec["strategy"] = common.require_choice(job.scheduling_strategy, "--scheduling_strategy",
                                             SCHEDULING_STRATEGIES)
  if job.max_wait_hours is not None:
    if job.scheduling_strategy != "FLEX_START":
      raise common.LaunchError("--max_wait_hours applies to --scheduling_strategy=FLEX_START only "
                               "(how long to wait for the machines)")
    spec["maxWaitDuration"] = _duration(job.max_wait_hours, "--max_wait_hours")
  if job.timeout_hours is not None:
    spec["timeout"] = _duration(job.timeout_hours, "--timeout_hours")
  return spec


def custom_job_spec(job: VertexTrainJob) -> dict:
  """The CustomJobSpec (REST field names) for `gcloud ai custom-jobs create --config`.

  Raises:
    LaunchError: Missing image or paths, or a machine that does not fit the mode.
  """
  defaults = DEFAULTS[common.require_choice(job.mode, "--mode", MODES)]
  image_uri = common.require(job.image_uri, "--image_uri",
                             "a training container with this package installed; see launch/Dockerfile")
  args = container_args(job)
  command = container_command(job)
  job_scheduling = scheduling(job)
  if job.mode == "tpu":
    machine_spec = _tpu_machine_spec(job, defaults)
  else:
    machine_spec = _gpu_machine_spec(job, defaults)
  replica_count = job.replica_count if job.replica_count is not None else defaults.replica_count
  if job.mode == "multi_worker":
    if replica_count < 2:
      raise common.LaunchError(f"mode multi_worker needs --replica_count of at least 2 (chief + workers); "
                               f"got {replica_count}")
  elif replica_count != 1:
    raise common.LaunchError(f"mode {job.mode} runs on one machine: --replica_count must be 1 "
                             f"(use --mode=multi_worker for several); got {replica_count}")

  def pool(count: int) -> dict:
    return {"machineSpec": dict(machine_spec), "replicaCount": count,
            "containerSpec": {"imageUri": image_uri, "command": list(command), "args": list(args)}}

  pools = [pool(1)]
  if replica_count > 1:
    pools.append(pool(replica_count - 1))
  spec = {"workerPoolSpecs": pools, "scheduling": job_scheduling}
  if job.service_account:
    spec["serviceAccount"] = job.service_account
  return spec


def gcloud_command(*, project: str | None, region: str | None, display_name: str, config_file: str) -> list[str]:
  """`gcloud ai custom-jobs create` for a spec saved (as YAML or JSON) at config_file."""
  project = common.require(project, "--project", "the GCP project that runs the Vertex AI job")
  region = common.require(region, "--region", "the Vertex AI region, e.g. us-central1")
  common.require(display_name, "--display_name", "Vertex AI lists jobs by it")
  return ["gcloud", "ai", "custom-jobs", "create", f"--project={project}", f"--region={region}",
          f"--display-name={display_name}", f"--config={config_file}"]


def _snake(name: str) -> str:
  return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def to_sdk_dicts(value):
  """REST camelCase keys -> the proto field names google-cloud-aiplatform accepts."""
  if isinstance(value, dict):
    return {_snake(k): to_sdk_dicts(v) for k, v in value.items()}
  if isinstance(value, list):
    return [to_sdk_dicts(v) for v in value]
  return value


def submit(spec: dict, *, project: str | None, region: str | None, display_name: str,
           staging_bucket: str | None):
  """Creates the job with google-cloud-aiplatform (the `gcp` extra) and returns it without waiting."""
  project = common.require(project, "--project", "the GCP project that runs the Vertex AI job")
  region = common.require(region, "--region", "the Vertex AI region, e.g. us-central1")
  staging_bucket = common.require_gcs(staging_bucket, "--staging_bucket",
                                      "the Vertex AI SDK stages job files there")
  try:
    from google.cloud import aiplatform  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise common.LaunchError(
        "--submit needs google-cloud-aiplatform: pip install '.[gcp]', or run the printed "
        "gcloud command instead") from error
  aiplatform.init(project=project, location=region, staging_bucket=staging_bucket)
  job = aiplatform.CustomJob(display_name=display_name,
                             worker_pool_specs=to_sdk_dicts(spec["workerPoolSpecs"]),
                             staging_bucket=staging_bucket)
  kwargs = {"service_account": spec["serviceAccount"]} if "serviceAccount" in spec else {}
  job_scheduling = spec.get("scheduling", {})
  kwargs["restart_job_on_worker_restart"] = job_scheduling.get("restartJobOnWorkerRestart", False)
  if "timeout" in job_scheduling:
    kwargs["timeout"] = int(job_scheduling["timeout"].rstrip("s"))
  if "strategy" in job_scheduling:
    # Strategy and maxWaitDuration are newer CustomJob.submit arguments; the
    # gcloud route (without --submit) carries them in the spec file.
    from google.cloud.aiplatform_v1.types import custom_job  # pylint: disable=g-import-not-at-top
    kwargs["scheduling_strategy"] = custom_job.Scheduling.Strategy[job_scheduling["strategy"]]
  if "maxWaitDuration" in job_scheduling:
    kwargs["max_wait_duration"] = int(job_scheduling["maxWaitDuration"].rstrip("s"))
  job.submit(**kwargs)
  return job

