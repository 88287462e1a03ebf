"""The same predictions from DirectRunner in-process, multi_processing and DaskRunner."""

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


def _compare(expected, actual):
  assert actual["summary"]["accounted"]
  assert {k: v for k, v in actual["summary"].items() if k != "output_dir"} == {
      k: v for k, v in expected["summary"].items() if k != "output_dir"}
  assert sorted(actual["rejects"], key=str) == sorted(expected["rejects"], key=str)
  got, want = _predictions(actual), _predictions(expected)
  assert got.keys() == want.keys()
  for key, (months, group, overlay) in want.items():
    assert got[key][0] == pytest.approx(months, abs=1e-3) and got[key][1:] == (group, overlay)


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
