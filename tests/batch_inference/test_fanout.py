"""One archive is scored by several workers, not one (issue: Beam fused the archive into one element)."""

import zipfile

import pytest

from batch_inference import score

NUM_MEMBERS = 400
MAX_SHARE_OF_BUSIEST_WORKER = 0.65


@pytest.mark.slow
def test_one_zip_spreads_over_two_worker_processes(tiny_export, make, outputs_of, tmp_path):
  with zipfile.ZipFile(tmp_path / "batch.zip", "w") as archive:
    for i in range(NUM_MEMBERS):
      archive.writestr(f"hands/{i}.png", make.png(make.pixels(i, 48, 40)))
  score.run([f"--model_dir={tiny_export}", f"--inputs={tmp_path / 'batch.zip'}", f"--output_dir={tmp_path / 'out'}",
             "--unknown_sex=male", "--batch_size=8", "--runner=DirectRunner", "--direct_running_mode=multi_processing",
             "--direct_num_workers=2"])
  summary = outputs_of(tmp_path / "out")["summary"]
  assert summary["scored"] == NUM_MEMBERS and summary["read_equals_scored_plus_rejected"]
  per_worker = summary["scored_per_worker"]
  assert sum(per_worker.values()) == NUM_MEMBERS
  assert len(per_worker) == 2 and max(per_worker.values()) <= MAX_SHARE_OF_BUSIEST_WORKER * NUM_MEMBERS, per_worker
