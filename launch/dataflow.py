"""Dataflow commands for the two Beam jobs: the dataset build and batch scoring.

Both console scripts take ordinary Beam pipeline options after their own
flags, so a Dataflow launch is the local command plus the options built here.
Workers get this project's packages from a prebuilt `--sdk_container_image`
(`launch/Dockerfile`, CPU or GPU variant; `image_build_commands` builds and
pushes it): nothing is installed when a worker starts, and workers without
public IPs work. `--setup_file=./setup.py` remains for a quick try: Dataflow
then pip-installs TensorFlow and the rest on every worker at start-up, which
takes minutes per worker and needs PyPI, so it is refused with
`--no_use_public_ips`.

GPU scoring attaches one GPU per worker and keeps Dataflow's one SDK process
per vCPU: decoding, letterboxing and overlays are CPU work that uses every
core, while the model handler shares one model copy per worker across those
processes (RunInference model sharing), so only one process holds the GPU.
The batch size defaults to `DEFAULT_GPU_BATCH_SIZE` there.
"""

import dataclasses
import posixpath
import re

from launch import common

# Images per model call on a GPU worker unless --batch_size says otherwise (the
# scorer's own default suits a CPU).
DEFAULT_GPU_BATCH_SIZE = 32
IMAGE_VARIANTS = ("cpu", "gpu")
# Dataflow job names: lowercase letters, digits and dashes, starting with a letter.
_JOB_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# The CPU worker image's pinned stack, relative to the repository root (setup.py's folder).
CPU_REQUIREMENTS = "launch/requirements-cpu.txt"


@dataclasses.dataclass
class DataflowOptions:
  """Where and on what a Dataflow job runs. Every field maps to one Beam option.

  Attributes:
    project: GCP project that owns and pays for the job.
    region: Dataflow regional endpoint, e.g. us-central1 (keep buckets in the same region).
    temp_location: gs:// prefix for temporary files.
    staging_location: gs:// prefix for staged packages; defaults to gs://<temp bucket>/staging.
    setup_file: Path to setup.py that Dataflow builds and pip-installs on every worker at start-up
      (slow; needs public IPs). Ignored when sdk_container_image is given.
    sdk_container_image: Prebuilt worker image with this package installed (launch/Dockerfile).
    machine_type: Worker machine type, e.g. n1-standard-4.
    num_workers: Initial worker count (None: let Dataflow choose).
    max_num_workers: Autoscaling ceiling; bounds the cost of a run.
    disk_size_gb: Worker boot disk size.
    experiments: Extra --experiments values, each passed as its own flag.
    service_options: Extra --dataflow_service_options values (e.g. worker_accelerator=...).
    job_name: Dataflow job name (lowercase, digits, dashes).
    service_account_email: Worker service account.
    subnetwork: Worker subnetwork (regions/R/subnetworks/S or a full URL).
    no_use_public_ips: Workers without external IPs (needs Private Google Access).
  """
  project: str | None = None
  region: str | None = None
  temp_location: str | None = None
  staging_location: str | None = None
  setup_file: str | None = None
  sdk_container_image: str | None = None
  machine_type: str | None = "n1-standard-4"
  num_workers: int | None = None
  max_num_workers: int | None = 10
  disk_size_gb: int | None = None
  experiments: list[str] = dataclasses.field(default_factory=list)
  service_options: list[str] = dataclasses.field(default_factory=list)
  job_name: str | None = None
  service_account_email: str | None = None
  subnetwork: str | None = None
  no_use_public_ips: bool = False


def beam_options(options: DataflowOptions) -> list[str]:
  """The Beam pipeline options that send a job to Dataflow.

  Raises:
    LaunchError: A required option is missing, a location is not gs://, or a
      value Dataflow would reject (job name, worker counts).
  """
  project = common.require(options.project, "--project", "the GCP project that runs the Dataflow job")
  region = common.require(options.region, "--region", "the Dataflow region, e.g. us-central1")
  temp = common.require_gcs(options.temp_location, "--temp_location",
                            "Dataflow workers write temporary files there")
  staging = (common.require_gcs(options.staging_location, "--staging_location", "packages are staged there")
             if options.staging_location else common.bucket_root(temp) + "/staging")
  if not options.setup_file and not options.sdk_container_image:
    raise common.LaunchError("--sdk_container_image is required: workers need this project's packages (build the "
                             "image with --build_image, see launch/README.md), or --setup_file=./setup.py to "
                             "pip-install them on every worker at start-up")
  if options.no_use_public_ips and not options.sdk_container_image:
    raise common.LaunchError("--no_use_public_ips cannot be used with --setup_file: workers without public IPs "
                             "cannot reach PyPI to install it; use --sdk_container_image")
  common.require_positive(options.num_workers, "--num_workers")
  common.require_positive(options.max_num_workers, "--max_num_workers")
  common.require_positive(options.disk_size_gb, "--disk_size_gb")
  if (options.num_workers and options.max_num_workers
      and options.num_workers > options.max_num_workers):
    raise common.LaunchError(f"--num_workers ({options.num_workers}) exceeds "
                             f"--max_num_workers ({options.max_num_workers})")
  if options.job_name is not None and not _JOB_NAME.match(options.job_name):
    raise common.LaunchError(f"--job_name must be lowercase letters, digits and dashes, starting "
                             f"with a letter; got {options.job_name!r}")

  args = ["--runner=DataflowRunner", f"--project={project}", f"--region={region}",
          f"--temp_location={temp}", f"--staging_location={staging}"]
  # With a prebuilt image the package is already installed; staging setup.py
  # again would only slow every worker's start.
  if options.sdk_container_image:
    args += [f"--sdk_container_image={options.sdk_container_image}"]
  else:
    # setup.py names no TensorFlow variant (they are extras), so the workers
    # also install the CPU image's exact stack from PyPI; `skip` keeps the
    # launcher from downloading those wheels only to stage them.
    requirements = posixpath.join(posixpath.dirname(options.setup_file) or ".", CPU_REQUIREMENTS)
    args += [f"--setup_file={options.setup_file}", f"--requirements_file={requirements}",
             "--requirements_cache=skip"]
  args += common.flag("machine_type", options.machine_type)
  args += common.flag("num_workers", options.num_workers)
  args += common.flag("max_num_workers", options.max_num_workers)
  args += common.flag("disk_size_gb", options.disk_size_gb)
  args += [f"--experiments={e}" for e in options.experiments]
  args += [f"--dataflow_service_options={o}" for o in options.service_options]
  args += common.flag("job_name", options.job_name)
  args += common.flag("service_account_email", options.service_account_email)
  args += common.flag("subnetwork", options.subnetwork)
  if options.no_use_public_ips:
    args.append("--no_use_public_ips")
  return args


def image_build_commands(image: str | None, variant: str) -> list[list[str]]:
  """docker build and push of the worker image (run from the repository root).

  Args:
    image: Artifact Registry tag, e.g. REGION-docker.pkg.dev/PROJECT/boneage/worker:cpu.
    variant: cpu or gpu (launch/requirements-<variant>.txt).
  """
  tag = common.require(image, "--sdk_container_image", "the image tag to build and push")
  if variant not in IMAGE_VARIANTS:
    raise common.LaunchError(f"image variant must be one of {IMAGE_VARIANTS}, got {variant!r}")
  return [["docker", "build", "-f", "launch/Dockerfile", "--build-arg", f"VARIANT={variant}", "-t", tag, "."],
          ["docker", "push", tag]]


def preprocess_command(*, manual_dir: str | None, data_dir: str | None, options: DataflowOptions,
                       config: str = "384px", rejects: str | None = None,
                       dataset_module: str | None = None) -> list[str]:
  """boneage-preprocess on Dataflow: builds the rsna_bone_age TFDS dataset into data_dir.

  Args:
    manual_dir: gs:// folder holding the RSNA download as the builder expects it.
    data_dir: gs:// TFDS data dir the dataset is written to.
    options: Dataflow placement.
    config: Builder config (128px, 384px, 512px).
    rejects: gs:// JSON-lines file listing every rejected input with its reason.
    dataset_module: Module that registers the builder (boneage-preprocess default when None).
  """
  manual = common.require_gcs(manual_dir, "--manual_dir", "Dataflow workers read the raw RSNA files there")
  data = common.require_gcs(data_dir, "--data_dir", "Dataflow workers write the TFDS dataset there")
  common.require(config, "--config", "the builder config, e.g. 384px")
  command = ["boneage-preprocess", f"--manual_dir={manual}", f"--data_dir={data}", f"--config={config}"]
  if rejects:
    command += [f"--rejects={common.require_gcs(rejects, '--rejects', 'workers write the rejects file')}"]
  command += common.flag("dataset_module", dataset_module)
  return command + beam_options(options)


def worker_accelerator_option(accelerator: str, count: int = 1) -> str:
  """A Dataflow GPU worker option, e.g. worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver."""
  common.require(accelerator, "--worker_accelerator", "a Dataflow GPU type such as nvidia-l4")
  common.require_positive(count, "--worker_accelerator_count")
  return f"worker_accelerator=type:{accelerator};count:{count};install-nvidia-driver"


def score_command(*, model_dir: str | None, inputs: str | None, output_dir: str | None,
                  options: DataflowOptions, metadata_csv: str | None = None, gradcam: bool | None = None,
                  unknown_sex: str | None = None, worker_accelerator: str | None = None,
                  worker_accelerator_count: int = 1, batch_size: int | None = None) -> list[str]:
  """boneage-score on Dataflow: scores every radiograph matching `inputs`.

  Args:
    model_dir: gs:// export dir (has export_metadata.json) or a model_dir holding export/.
    inputs: Comma-separated gs:// glob patterns (PNG, JPEG, DICOM).
    output_dir: gs:// folder for predictions, reports and rejects.
    options: Dataflow placement.
    metadata_csv: Optional gs:// CSV with sex (and dates) for images that lack DICOM tags.
    gradcam: Also write Grad-CAM heatmaps (costs about one more forward pass).
    unknown_sex: What to do with images whose sex is unknown (boneage-score's choices).
    worker_accelerator: Dataflow GPU type (nvidia-l4, nvidia-tesla-t4, ...); needs
      sdk_container_image with TensorFlow's CUDA libraries.
    worker_accelerator_count: GPUs per worker.
    batch_size: Images per model call (DEFAULT_GPU_BATCH_SIZE with a GPU, else the scorer's default).
  """
  model = common.require_gcs(model_dir, "--model_dir", "Dataflow workers load the exported model from there")
  patterns = common.require(inputs, "--inputs", "comma-separated gs:// patterns of radiographs to score")
  for pattern in patterns.split(","):
    common.require_gcs(pattern.strip(), "--inputs", "Dataflow workers read the radiographs from there")
  output = common.require_gcs(output_dir, "--output_dir", "Dataflow workers write predictions there")
  command = ["boneage-score", f"--model_dir={model}", f"--inputs={patterns}", f"--output_dir={output}"]
  if metadata_csv:
    command += [f"--metadata_csv={common.require_gcs(metadata_csv, '--metadata_csv', 'workers read it')}"]
  command += common.flag("gradcam", gradcam)
  command += common.flag("unknown_sex", unknown_sex)
  common.require_positive(batch_size, "--batch_size")
  if batch_size is None and worker_accelerator:
    batch_size = DEFAULT_GPU_BATCH_SIZE
  command += common.flag("batch_size", batch_size)
  if worker_accelerator:
    if worker_accelerator_count != 1:
      raise common.LaunchError("--worker_accelerator_count must be 1: the scorer shares one model copy per worker "
                               "across its processes; add workers (--max_num_workers) for more GPUs")
    if not options.sdk_container_image:
      raise common.LaunchError("--worker_accelerator needs --sdk_container_image: the default Dataflow "
                               "worker image has no CUDA libraries for TensorFlow")
    # Dataflow attaches L4 GPUs only to G2 machines.
    if worker_accelerator == "nvidia-l4" and not (options.machine_type or "").startswith("g2-"):
      raise common.LaunchError("--worker_accelerator=nvidia-l4 needs a G2 --machine_type, e.g. g2-standard-4; "
                               f"got {options.machine_type!r}")
    options = dataclasses.replace(
        options, service_options=[*options.service_options,
                                  worker_accelerator_option(worker_accelerator, worker_accelerator_count)])
  return command + beam_options(options)
