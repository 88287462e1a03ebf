"""boneage-launch dataflow-preprocess / dataflow-score: the printed commands parse and carry Dataflow's options."""

import shlex

import pytest

from launch import cli

IMAGE = "europe-docker.pkg.dev/bone-proj/boneage/worker:cpu"
PLACEMENT = ["--project=bone-proj", "--region=europe-west4", "--temp_location=gs://bone-bucket/tmp",
             f"--sdk_container_image={IMAGE}"]


def _dry_run(capsys, argv: list[str]) -> list[str]:
  assert cli.main(["boneage-launch", *argv, "--dry_run"]) == 0
  out = capsys.readouterr().out.strip()
  assert "\n" not in out, "a command is printed on one line"
  return shlex.split(out)


def _flags(argv: list[str]) -> dict[str, list[str]]:
  flags = {}
  for arg in argv[1:]:
    name, _, value = arg.partition("=")
    flags.setdefault(name, []).append(value)
  return flags


def test_preprocess_command_carries_dataflow_options(capsys):
  argv = _dry_run(capsys, ["dataflow-preprocess", *PLACEMENT, "--manual_dir=gs://bone-bucket/rsna",
                           "--data_dir=gs://bone-bucket/tfds", "--config=512px",
                           "--rejects=gs://bone-bucket/rejects.jsonl", "--max_num_workers=32",
                           "--machine_type=n2-highmem-8", "--experiments=use_runner_v2",
                           "--experiments=no_use_multiple_sdk_containers", "--job_name=boneage-build-512"])
  assert argv[0] == "boneage-preprocess"
  flags = _flags(argv)
  assert flags["--runner"] == ["DataflowRunner"]
  assert flags["--manual_dir"] == ["gs://bone-bucket/rsna"]
  assert flags["--data_dir"] == ["gs://bone-bucket/tfds"]
  assert flags["--config"] == ["512px"]
  assert flags["--rejects"] == ["gs://bone-bucket/rejects.jsonl"]
  assert flags["--sdk_container_image"] == [IMAGE]
  assert "--setup_file" not in flags, "CPU workers use the image too: nothing is pip-installed at start-up"
  assert flags["--staging_location"] == ["gs://bone-bucket/staging"]
  assert flags["--experiments"] == ["use_runner_v2", "no_use_multiple_sdk_containers"]


def test_beam_reads_the_printed_options(capsys):
  """The options are real Beam flags: PipelineOptions parses them to the intended values."""
  from apache_beam.options import pipeline_options as po  # pylint: disable=g-import-not-at-top
  argv = _dry_run(capsys, ["dataflow-preprocess", *PLACEMENT, "--manual_dir=gs://bone-bucket/rsna",
                           "--data_dir=gs://bone-bucket/tfds", "--max_num_workers=16", "--num_workers=2",
                           "--experiments=use_runner_v2", "--no_use_public_ips"])
  options = po.PipelineOptions(argv[1:])
  cloud = options.view_as(po.GoogleCloudOptions)
  assert (cloud.project, cloud.region) == ("bone-proj", "europe-west4")
  assert cloud.temp_location == "gs://bone-bucket/tmp"
  assert cloud.staging_location == "gs://bone-bucket/staging"
  assert options.view_as(po.StandardOptions).runner == "DataflowRunner"
  assert options.view_as(po.SetupOptions).setup_file is None
  assert options.view_as(po.WorkerOptions).sdk_container_image == IMAGE
  workers = options.view_as(po.WorkerOptions)
  assert (workers.machine_type, workers.num_workers, workers.max_num_workers) == ("n1-highmem-4", 2, 16)
  assert workers.use_public_ips is False
  assert options.view_as(po.DebugOptions).experiments == ["use_runner_v2"]


def test_score_command_with_gpu_workers_uses_the_container_image(capsys):
  argv = _dry_run(capsys, ["dataflow-score", *PLACEMENT, "--model_dir=gs://bone-bucket/models/run1/export",
                           "--inputs=gs://bone-bucket/in/*.dcm,gs://bone-bucket/in/*.png",
                           "--output_dir=gs://bone-bucket/scores", "--gradcam=true", "--unknown_sex=reject",
                           "--sdk_container_image=europe-docker.pkg.dev/bone-proj/boneage/worker:gpu",
                           "--worker_accelerator=nvidia-l4", "--machine_type=g2-standard-4",
                           "--max_num_workers=4"])
  assert argv[0] == "boneage-score"
  flags = _flags(argv)
  assert flags["--runner"] == ["DataflowRunner"]
  assert flags["--inputs"] == ["gs://bone-bucket/in/*.dcm,gs://bone-bucket/in/*.png"]
  assert flags["--gradcam"] == ["true"]
  assert flags["--unknown_sex"] == ["reject"]
  assert flags["--sdk_container_image"] == ["europe-docker.pkg.dev/bone-proj/boneage/worker:gpu"], "the last one wins"
  assert "--setup_file" not in flags, "a prebuilt image already holds the package"
  assert flags["--dataflow_service_options"] == ["worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
  assert flags["--batch_size"] == ["32"], "GPU default"
  explicit = _flags(_dry_run(capsys, ["dataflow-score", *PLACEMENT, "--model_dir=gs://b/m", "--inputs=gs://b/*.png",
                                      "--output_dir=gs://b/o", "--worker_accelerator=nvidia-tesla-t4",
                                      "--batch_size=64"]))
  assert explicit["--batch_size"] == ["64"]


def test_score_command_on_cpu_workers_keeps_the_scorers_batch_size(capsys):
  flags = _flags(_dry_run(capsys, ["dataflow-score", *PLACEMENT, "--model_dir=gs://b/m",
                                   "--inputs=gs://b/in/*.png", "--output_dir=gs://b/out"]))
  assert flags["--sdk_container_image"] == [IMAGE] and "--setup_file" not in flags
  assert "--gradcam" not in flags and "--dataflow_service_options" not in flags and "--batch_size" not in flags


def test_score_command_parses_with_boneage_score_flags(capsys):
  """boneage-score's own parser reads the GPU batch size the launcher adds."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from batch_inference import score  # pylint: disable=g-import-not-at-top
  argv = _dry_run(capsys, ["dataflow-score", *PLACEMENT, "--model_dir=gs://b/m", "--inputs=gs://b/*.png",
                           "--output_dir=gs://b/o", "--worker_accelerator=nvidia-tesla-t4"])
  # Its flag definitions only: parse_args would also probe the gs:// patterns.
  flag_values = flags.FlagValues()
  score._define_flags(flag_values)  # pylint: disable=protected-access
  leftover = flag_values(argv, known_only=True)
  assert flag_values.batch_size == 32 and flag_values.output_dir == "gs://b/o"
  assert "--runner=DataflowRunner" in leftover


def test_setup_file_is_still_possible_on_public_workers(capsys):
  flags = _flags(_dry_run(capsys, ["dataflow-preprocess", *PLACEMENT[:3], "--setup_file=./setup.py",
                                   "--manual_dir=gs://b/m", "--data_dir=gs://b/d"]))
  assert flags["--setup_file"] == ["./setup.py"] and "--sdk_container_image" not in flags
  # setup.py's core names no TensorFlow: the workers get the CPU image's pinned stack.
  assert flags["--requirements_file"] == ["./launch/requirements-cpu.txt"]
  assert flags["--requirements_cache"] == ["skip"]


def test_build_image_prints_docker_build_and_push_before_the_job(capsys):
  assert cli.main(["boneage-launch", "dataflow-score", *PLACEMENT, "--model_dir=gs://b/m", "--inputs=gs://b/*.png",
                   "--output_dir=gs://b/o", "--build_image=cpu", "--dry_run"]) == 0
  build, push, job = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert build == ["docker", "build", "-f", "launch/Dockerfile", "--build-arg", "VARIANT=cpu", "-t", IMAGE, "."]
  assert push == ["docker", "push", IMAGE]
  assert job[0] == "boneage-score" and f"--sdk_container_image={IMAGE}" in job


@pytest.mark.parametrize("target, argv, message", [
    ("dataflow-preprocess", ["--region=r", "--temp_location=gs://b/t", "--manual_dir=gs://b/m", "--data_dir=gs://b/d"],
     "--project is required"),
    ("dataflow-preprocess", ["--project=p", "--temp_location=gs://b/t", "--manual_dir=gs://b/m", "--data_dir=gs://b/d"],
     "--region is required"),
    ("dataflow-preprocess", ["--project=p", "--region=r", "--manual_dir=gs://b/m", "--data_dir=gs://b/d"],
     "--temp_location is required"),
    ("dataflow-preprocess", ["--project=p", "--region=r", "--temp_location=/tmp/x", "--manual_dir=gs://b/m",
                             "--data_dir=gs://b/d"], "--temp_location must be a gs:// URI"),
    ("dataflow-preprocess", [*PLACEMENT, "--manual_dir=/home/me/rsna", "--data_dir=gs://b/d"],
     "--manual_dir must be a gs:// URI"),
    ("dataflow-preprocess", [*PLACEMENT, "--manual_dir=gs://b/m", "--data_dir=gs://b/d", "--job_name=Bone_Age"],
     "--job_name must be lowercase"),
    ("dataflow-preprocess", [*PLACEMENT, "--manual_dir=gs://b/m", "--data_dir=gs://b/d", "--num_workers=20",
                             "--max_num_workers=5"], "exceeds --max_num_workers"),
    ("dataflow-score", [*PLACEMENT, "--inputs=gs://b/*.png", "--output_dir=gs://b/o"], "--model_dir is required"),
    ("dataflow-score", [*PLACEMENT, "--model_dir=gs://b/m", "--inputs=gs://b/*.png,./local/*.png",
                        "--output_dir=gs://b/o"], "--inputs must be a gs:// URI"),
    ("dataflow-score", [*PLACEMENT[:3], "--setup_file=./setup.py", "--model_dir=gs://b/m", "--inputs=gs://b/*.png",
                        "--output_dir=gs://b/o", "--worker_accelerator=nvidia-l4"],
     "--worker_accelerator needs --sdk_container_image"),
    ("dataflow-score", [*PLACEMENT, "--model_dir=gs://b/m", "--inputs=gs://b/*.png", "--output_dir=gs://b/o",
                        "--machine_type=g2-standard-8", "--worker_accelerator=nvidia-l4",
                        "--worker_accelerator_count=2"], "--worker_accelerator_count must be 1"),
    ("dataflow-score", [*PLACEMENT, "--model_dir=gs://b/m", "--inputs=gs://b/*.png", "--output_dir=gs://b/o",
                        "--batch_size=0"], "--batch_size must be at least 1"),
    ("dataflow-preprocess", [*PLACEMENT[:3], "--manual_dir=gs://b/m", "--data_dir=gs://b/d"],
     "--sdk_container_image is required"),
    ("dataflow-preprocess", [*PLACEMENT[:3], "--setup_file=./setup.py", "--no_use_public_ips", "--manual_dir=gs://b/m",
                             "--data_dir=gs://b/d"], "workers without public IPs cannot reach PyPI"),
    ("dataflow-score", [*PLACEMENT[:3], "--setup_file=./setup.py", "--no_use_public_ips", "--model_dir=gs://b/m",
                        "--inputs=gs://b/*.png", "--output_dir=gs://b/o"], "--no_use_public_ips cannot be used with"),
    ("dataflow-score", [*PLACEMENT[:3], "--model_dir=gs://b/m", "--inputs=gs://b/*.png", "--output_dir=gs://b/o",
                        "--build_image=gpu"], "--sdk_container_image is required"),
    ("dataflow-score", [*PLACEMENT, "--model_dir=gs://b/m", "--inputs=gs://b/*.png", "--output_dir=gs://b/o",
                        "--sdk_container_image=img", "--worker_accelerator=nvidia-l4"], "needs a G2 --machine_type"),
])
def test_missing_or_unusable_parameters_fail_with_the_flag_named(capsys, target, argv, message):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["boneage-launch", target, *argv, "--dry_run"])
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  assert message in captured.err
  assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err, captured.err
  assert captured.out == "", "nothing is printed as a command when the parameters are wrong"


def test_boneage_preprocess_takes_its_flags_and_hands_the_rest_to_beam(capsys):
  """The real console script's parser splits the printed command as intended."""
  from beam_pipelines import preprocess  # pylint: disable=g-import-not-at-top
  argv = _dry_run(capsys, ["dataflow-preprocess", *PLACEMENT, "--manual_dir=gs://bone-bucket/rsna",
                           "--data_dir=gs://bone-bucket/tfds", "--rejects=gs://bone-bucket/rejects.jsonl"])
  beam_args = preprocess.parse_argv(argv)
  assert beam_args == argv[argv.index("--runner=DataflowRunner"):]
  assert not any(arg.startswith(("--manual_dir", "--data_dir", "--config", "--rejects")) for arg in beam_args)
