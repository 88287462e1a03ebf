"""The same predictions from DirectRunner in-process, multi_processing and DaskRunner."""

import re

import pytest
from apache_beam.testing import test_pipeline

from batch_inference import score

NUM_IMAGES = 5


@pytest.fixture(scope="module")
def scored_in_process(tiny_export, make, outputs_of, tmp_path_factory):
  """Inputs (PNG and a zip) and their in-process DirectRunner outputs."""
  import zipfile  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("runners")
  inputs = root / "in"
  inputs.mkdir()
  for i in range(NUM_IMAGES):
    (inputs / f"{i}.png").write_bytes(make.png(make.pixels(i)))
  with zipfile.ZipFile(inputs / "more.zip", "w") as archive:
    archive.writestr("z.dcm", make.dicom(make.pixels(99), sex="F"))
    archive.writestr("link/../bad.zip", b"PK\x03\x04")
  (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
  argv = [f"--model_dir={tiny_export}", f"--inputs={inputs}/*", "--unknown_sex=male", "--batch_size=2"]
  score.run(argv + [f"--output_dir={root / 'direct'}"], test_pipeline=test_pipeline.TestPipeline())
  return argv, root, outputs_of(root / "direct")


def _predictions(out):
  return {(r["id"], r["sex"]): (r["boneage_months"], r["age_group"], r["overlay_path"]) for r in out["predictions"]}


# Summary fields that name this run or its worker processes, not what was scored.
_RUN_SPECIFIC = ("output_dir", "run_id", "run_dir", "started", "finished", "scored_per_worker")


def _what_was_scored(summary: dict) -> dict:
  """The summary without the fields naming this run (its provenance's start time included)."""
  kept = {k: v for k, v in summary.items() if k not in _RUN_SPECIFIC}
  kept["provenance"] = {k: v for k, v in summary["provenance"].items() if k != "run_started_utc"}
  return kept


def _compare(expected, actual):
  assert actual["summary"]["read_equals_scored_plus_rejected"]
  assert sum(actual["summary"]["scored_per_worker"].values()) == actual["summary"]["scored"]
  assert _what_was_scored(actual["summary"]) == _what_was_scored(expected["summary"])
  assert sorted(actual["rejects"], key=str) == sorted(expected["rejects"], key=str)
  got, want = _predictions(actual), _predictions(expected)
  assert got.keys() == want.keys()
  for key, (months, group, overlay) in want.items():  # written months are rounded to 0.1
    assert got[key][0] == pytest.approx(months, abs=0.101) and got[key][1:] == (group, overlay)


def test_multi_processing_direct_runner_matches_in_process(scored_in_process, outputs_of):
  argv, root, expected = scored_in_process
  assert expected["summary"]["scored"] == NUM_IMAGES + 1 and len(expected["rejects"]) == 2
  score.run(argv + [f"--output_dir={root / 'multi'}", "--runner=DirectRunner", "--direct_num_workers=2",
                    "--direct_running_mode=multi_processing"])
  _compare(expected, outputs_of(root / "multi"))


def test_dask_runner_on_a_local_cluster_matches_in_process(scored_in_process, outputs_of):
  distributed = pytest.importorskip("distributed")
  argv, root, expected = scored_in_process
  # Threads rather than processes keep the test short (no TensorFlow import
  # per worker); the scheduler, the task graph and our runner are the same.
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
    score.run(argv + [f"--output_dir={root / 'dask'}", "--runner=beam_pipelines.dask_runner.DaskRunner",
                      f"--dask_client_address={cluster.scheduler_address}", "--dask_npartitions=2"])
  _compare(expected, outputs_of(root / "dask"))


ZIP_IMAGES = 400
MAX_BUSIEST_SHARE = 0.65
# The bound. Work done twice (every image decoded and scored by more
# than one worker) costs 2x or more; two worker processes each loading and
# tracing the model, and Dask's per-task cost, are what the margin below it
# pays for.
MAX_CPU_OVER_DIRECT = 1.5
IMAGE_HEIGHT_PX, IMAGE_WIDTH_PX = 1040, 800
MODEL_SIZE_PX = 192

# What each CPU figure holds. Both exclude the interpreter's start and the
# imports of TensorFlow, Beam and this package (a per-process cost, paid once
# per worker process whatever it scores); both include loading the model,
# tracing it and all the work on the images. The DirectRunner figure is one
# in-process FnApiRunner worker, so it also holds the launcher's own work
# (building the pipeline, listing the zip, committing the run), which on Dask
# runs in the launcher and is not counted. Dask's worker figure holds
# everything its worker processes do while the job runs (tasks, heartbeats).
_DIRECT_CHILD = """
import resource, sys
sys.path[:0] = {path!r}
import tensorflow
from batch_inference import score
start = resource.getrusage(resource.RUSAGE_SELF)
summary = score.run({argv!r})
assert summary["scored"] == {images}, summary
end = resource.getrusage(resource.RUSAGE_SELF)
print("CPU_S", end.ru_utime + end.ru_stime - start.ru_utime - start.ru_stime)
"""


def _process_cpu_s() -> float:
  """This process's CPU seconds, after the imports the DirectRunner child makes before reading its own."""
  import psutil  # pylint: disable=g-import-not-at-top
  import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  import batch_inference.score  # pylint: disable=g-import-not-at-top,unused-import
  times = psutil.Process().cpu_times()
  return times.user + times.system


@pytest.mark.slow
def test_one_zip_spreads_over_two_dask_worker_processes_without_extra_cpu(make, outputs_of, tmp_path):
  """One zip of 400 images on 2 Dask worker processes: work split, each image scored once, CPU near one DirectRunner."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top

  from bone_age import export  # pylint: disable=g-import-not-at-top
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

  distributed = pytest.importorskip("distributed")
  # The tiny backbone at a larger input than the shared fixture's: per-image work, not loading, dominates.
  model = ba_model.build_model(image_size_px=MODEL_SIZE_PX, age_group_edges_months=[113.0, 150.0], backbone="tiny",
                               weights=None)
  export.save_export(model, str(tmp_path / "model"), {"backbone": "tiny", "dataset_version": "test"})
  with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:
    for i in range(ZIP_IMAGES):
      # Radiograph-like sizes, so that decoding and overlays (per-image work) outweigh loading the model.
      archive.writestr(f"hands/{i}.png", make.png(make.pixels(i, height_px=IMAGE_HEIGHT_PX, width_px=IMAGE_WIDTH_PX)))
  argv = [f"--model_dir={tmp_path / 'model'}", f"--inputs={tmp_path / 'export.zip'}", "--unknown_sex=male",
          "--gradcam=true"]

  # The same zip on one DirectRunner worker, in a fresh process whose whole CPU is the baseline.
  child = _DIRECT_CHILD.format(path=sys.path, argv=argv + [f"--output_dir={tmp_path / 'direct'}"], images=ZIP_IMAGES)
  direct = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=False)
  assert direct.returncode == 0, direct.stderr[-3000:]
  direct_cpu_s = float([l for l in direct.stdout.splitlines() if l.startswith("CPU_S")][0].split()[1])

  import dask  # pylint: disable=g-import-not-at-top

  # Dask workers sample their own stacks every few ms (the dashboard's profile); that is the cluster's
  # cost, not the job's, and production clusters may turn it off the same way.
  with dask.config.set({"distributed.worker.profile.enabled": False}), distributed.LocalCluster(
      n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
    with distributed.Client(cluster) as client:
      before = client.run(_process_cpu_s)
      launcher_before = _process_cpu_s()
      summary = score.run(argv + [f"--output_dir={tmp_path / 'dask'}", "--runner=DaskRunner",
                                  f"--dask_client_address={cluster.scheduler_address}"])
      launcher_cpu_s = _process_cpu_s() - launcher_before
      after = client.run(_process_cpu_s)
  dask_cpu_s = sum(after[w] - before[w] for w in after)
  print(f"images per worker {summary['scored_per_worker']}; CPU s: Dask workers {dask_cpu_s:.1f} "
        f"(launcher and scheduler {launcher_cpu_s:.1f}, not counted), one DirectRunner worker {direct_cpu_s:.1f} "
        f"({dask_cpu_s / direct_cpu_s:.2f}x)")

  assert summary["scored"] == ZIP_IMAGES and summary["read_equals_scored_plus_rejected"], summary
  per_worker = summary["scored_per_worker"]
  assert len(per_worker) == 2 and sum(per_worker.values()) == ZIP_IMAGES, per_worker
  assert max(per_worker.values()) <= MAX_BUSIEST_SHARE * ZIP_IMAGES, per_worker
  out = outputs_of(tmp_path / "dask")
  assert sorted(r["id"] for r in out["predictions"]) == sorted(f"export.zip!hands/{i}.png" for i in range(ZIP_IMAGES))
  assert dask_cpu_s <= MAX_CPU_OVER_DIRECT * direct_cpu_s, (dask_cpu_s, direct_cpu_s)


@pytest.mark.slow  # two Dask worker processes each import TensorFlow and load the model
def test_dask_scoring_on_two_worker_processes_prints_done_of_total(tiny_export, make, outputs_of, tmp_path, capsys):
  """The workers' counts reach the launcher's progress line; the zip's members join the total as listed."""
  import zipfile  # pylint: disable=g-import-not-at-top
  distributed = pytest.importorskip("distributed")
  inputs = tmp_path / "in"
  inputs.mkdir()
  for i in range(4):
    (inputs / f"{i}.png").write_bytes(make.png(make.pixels(i)))
  with zipfile.ZipFile(inputs / "batch.zip", "w") as archive:
    for i in range(3):
      archive.writestr(f"hands/{i}.png", make.png(make.pixels(10 + i)))
  (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
    summary = score.run([f"--model_dir={tiny_export}", f"--inputs={inputs}/*", "--unknown_sex=male",
                         f"--output_dir={tmp_path / 'out'}", "--runner=DaskRunner",
                         f"--dask_client_address={cluster.scheduler_address}"])
  assert summary["read"] == 8 and summary["scored"] == 7 and summary["rejected"] == 1
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("scoring:")]
  assert lines and lines[-1].startswith("scoring: 8/8 inputs (100%) · "), lines
  assert all(re.match(r"scoring: \d+/\d+ inputs( listed so far)? \(\d+%\) · ", line) for line in lines), lines
