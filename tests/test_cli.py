"""The one command-line convention (bone_age/cli.py), checked in-process on every command's main."""

from absl import flags
import pytest

from batch_inference import score
from beam_pipelines import preprocess
from bone_age import cli
from bone_age import phantoms
from launch import cli as launch_cli
from trainer import evaluate_main
from trainer import train_main

# (main, program name, every flag the command defines)
COMMANDS = [
    (phantoms.main, "boneage-phantoms", ["output_dir", "num_images", "seed", "height_px", "width_px",
                                         "image_format", "first_id", "verbosity"]),
    (preprocess.main, "boneage-preprocess", ["manual_dir", "data_dir", "config", "rejects", "dataset_module",
                                             "dataset", "compute_stats", "quality_gate", "overwrite", "verbosity"]),
    (train_main.main, "boneage-train", ["data_dir", "model_dir", "experiment", "config_override", "strategy",
                                        "precision", "tpu", "deterministic", "print_config",
                                        "num_replicas_for_print", "verbosity"]),
    (evaluate_main.main, "boneage-evaluate", ["data_dir", "model_dir", "split", "output_dir", "batch_size",
                                              "masks_dir", "verbosity"]),
    (score.main, "boneage-score", ["model_dir", "inputs", "inputs_manifest", "allow_empty_patterns", "output_dir",
                                   "metadata_csv", "gradcam", "unknown_sex", "batch_size", "engine", "precision",
                                   "max_member_bytes", "members_per_read", "max_pixels", "quality_gate",
                                   "overlay_max_px", "dicom_outputs", "dicomweb_url", "verbosity"]),
    (launch_cli.main, "boneage-launch", ["verbosity"]),
]


@pytest.mark.parametrize("main, prog, flag_names", COMMANDS, ids=[c[1] for c in COMMANDS])
@pytest.mark.parametrize("help_flag", ["--help", "--helpshort"])
def test_help_lists_every_flag_in_under_60_lines(main, prog, flag_names, help_flag, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main([prog, help_flag])
  out = capsys.readouterr().out
  assert exit_info.value.code == 0 and out.startswith(f"usage: {prog} ")
  assert len(out.splitlines()) < 60, out
  for name in flag_names:
    assert f"--{name}" in out or f"--[no]{name}" in out, name


def _usage_error(main, argv, capsys) -> str:
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  err = capsys.readouterr().err
  assert exit_info.value.code == 2, err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
  return err


def test_score_usage_mistakes_are_one_line(tmp_path, capsys):
  png = tmp_path / "a.png"
  png.write_bytes(b"x")
  base = ["boneage-score", f"--inputs={png}", f"--output_dir={tmp_path / 'out'}"]
  assert "--model_dir is required" in _usage_error(score.main, base, capsys)
  err = _usage_error(score.main, [*base, f"--model_dir={tmp_path}", "--unknown_sex=maybe"], capsys)
  assert "--unknown_sex=maybe" in err and "reject|both|male|female" in err
  err = _usage_error(score.main, [*base, f"--model_dir={tmp_path}", "--metdata_csv=x.csv"], capsys)
  assert "--metdata_csv" in err and "neither this command nor Beam" in err
  err = _usage_error(score.main, [*base, f"--model_dir={tmp_path}", "--direct_num_workers=two"], capsys)
  assert "direct_num_workers" in err


def test_score_without_a_model_says_train_first(tmp_path, capsys):
  png = tmp_path / "a.png"
  png.write_bytes(b"x")
  err = _usage_error(score.main, ["boneage-score", f"--inputs={png}", f"--output_dir={tmp_path / 'out'}",
                                  f"--model_dir={tmp_path}"], capsys)
  assert f"--model_dir={tmp_path}" in err and "boneage-train" in err
  assert not (tmp_path / "out").exists()


def test_preprocess_with_a_missing_manual_dir_writes_nothing(tmp_path, capsys):
  err = _usage_error(preprocess.main, ["boneage-preprocess", f"--manual_dir={tmp_path / 'nope'}",
                                       f"--data_dir={tmp_path / 'tfds'}"], capsys)
  assert f"--manual_dir={tmp_path / 'nope'}" in err
  assert not (tmp_path / "tfds").exists()
  assert "--runnr" in _usage_error(preprocess.main, ["boneage-preprocess", f"--manual_dir={tmp_path}",
                                                     f"--data_dir={tmp_path / 'tfds'}", "--runnr=Dask"], capsys)


def test_evaluate_before_training_says_train_first(tmp_path, capsys):
  (tmp_path / "tfds").mkdir()
  (tmp_path / "run").mkdir()
  err = _usage_error(evaluate_main.main, ["boneage-evaluate", f"--data_dir={tmp_path / 'tfds'}",
                                          f"--model_dir={tmp_path / 'run'}", f"--output_dir={tmp_path / 'e'}"],
                     capsys)
  assert "train" in err and "boneage-train" in err


def test_train_usage_mistakes_are_one_line(tmp_path, capsys):
  assert "--model_dir is required" in _usage_error(train_main.main, ["boneage-train", "--data_dir=d"], capsys)
  assert "--bogus" in _usage_error(train_main.main, ["boneage-train", "--data_dir=d", "--model_dir=m", "--bogus"],
                                   capsys)
  err = _usage_error(train_main.main, ["boneage-train", f"--data_dir={tmp_path / 'no'}", "--model_dir=m"], capsys)
  assert "boneage-preprocess" in err


def _target_flags(target: str) -> list[str]:
  fv = flags.FlagValues()
  launch_cli.TARGETS[target].define(fv)
  return [name for name, flag in fv._flags().items() if name == flag.name]  # pylint: disable=protected-access


@pytest.mark.parametrize("target", sorted(launch_cli.TARGETS))
def test_launch_target_help_lists_every_flag_in_under_60_lines(target, capsys):
  with pytest.raises(SystemExit) as exit_info:
    launch_cli.main(["boneage-launch", target, "--help"])
  out = capsys.readouterr().out
  assert exit_info.value.code == 0 and out.startswith(f"usage: boneage-launch {target} ")
  assert len(out.splitlines()) < 60, out
  names = _target_flags(target)
  assert "dry_run" in names
  for name in [*names, "verbosity"]:
    assert f"--{name}" in out or f"--[no]{name}" in out, name


def test_launch_help_names_every_target(capsys):
  with pytest.raises(SystemExit) as exit_info:
    launch_cli.main(["boneage-launch", "--help"])
  out = capsys.readouterr().out
  assert exit_info.value.code == 0 and all(f"  {target} " in out for target in launch_cli.TARGETS), out


SCORE_PLACEMENT = ["--project=p", "--region=r", "--temp_location=gs://b/t", "--sdk_container_image=img",
                   "--model_dir=gs://b/m", "--inputs=gs://b/*.png", "--output_dir=gs://b/o", "--dry_run"]


def test_launch_usage_mistakes_are_one_line(capsys):
  launch = ["boneage-launch"]
  assert "a target is required" in _usage_error(launch_cli.main, launch, capsys)
  assert "unknown target 'vertex'" in _usage_error(launch_cli.main, [*launch, "vertex"], capsys)
  assert "--mode" in _usage_error(launch_cli.main, [*launch, "vertex-train", "--mode=nope"], capsys)
  err = _usage_error(launch_cli.main, [*launch, "vertex-train", "--projct=p"], capsys)
  assert "--projct" in err and "boneage-launch vertex-train --help" in err
  assert "--port" in _usage_error(launch_cli.main, [*launch, "tensorboard", "--model_dir=m", "--port=http"], capsys)
  err = _usage_error(launch_cli.main, [*launch, "dataflow-score", *SCORE_PLACEMENT, "--metdata_csv=gs://b/x.csv"],
                     capsys)
  assert "--metdata_csv" in err and "neither this command nor Beam" in err
  assert "DataflowRunner" in _usage_error(launch_cli.main, [*launch, "dataflow-score", *SCORE_PLACEMENT,
                                                           "--runner=DirectRunner"], capsys)
  assert "--num_workers=2" in _usage_error(launch_cli.main, [*launch, "local-multiworker", "--num_workers=2"], capsys)


@pytest.fixture
def restores_log_settings(monkeypatch):
  """--verbosity=debug sets process-wide log settings; put them back after the test."""
  for name in ("TF_CPP_MIN_LOG_LEVEL", cli.QUIET_WORKERS_ENV):
    monkeypatch.delenv(name, raising=False)
  yield
  cli.quiet_start(["boneage-launch"])


def test_launch_passes_beam_options_and_verbosity_to_the_job(capsys, restores_log_settings):
  assert launch_cli.main(["boneage-launch", "--verbosity=debug", "dataflow-score", *SCORE_PLACEMENT,
                          "--number_of_worker_harness_threads=4"]) == 0
  command = capsys.readouterr().out.split()
  assert command[:2] == ["boneage-score", "--verbosity=debug"]
  assert command[-1] == "--number_of_worker_harness_threads=4" and "--runner=DataflowRunner" in command


def test_launch_traceback_only_with_debug(capsys, restores_log_settings):
  with pytest.raises(SystemExit):
    launch_cli.main(["boneage-launch", "tensorboard", "--verbosity=debug"])
  err = capsys.readouterr().err
  assert "Traceback" in err and "--model_dir is required" in err.splitlines()[-1]
