"""The writers' memory does not grow with the number of rows (sharded sinks, combiner counts).

A fresh process per size feeds synthetic prediction rows, generated lazily
inside the pipeline, through batch_inference.writers.write_outputs on Beam's
in-process FnApiRunner, and reports its peak RSS. Gathering the rows on one
key or sorting them would hold every row at once and grow tenfold.
"""

import json
import subprocess
import sys

import pytest

ROWS_PER_CHUNK = 10_000

_CHILD = r"""
import json, resource, sys
import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import fn_runner
from batch_inference import pipeline as scoring
from batch_inference import writers

num_rows, rows_per_chunk, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
GROUPS = ["pre", "mid", "late"]

def rows_of(chunk):
  for i in range(chunk * rows_per_chunk, min(num_rows, (chunk + 1) * rows_per_chunk)):
    months = 60.0 + (i % 1500) / 10.0
    yield {"id": f"batch{i // 5000:05d}.zip!hands/img{i:08d}.dcm", "file": f"gs://bucket/export/batch{i // 5000:05d}.zip",
           "sex": "M" if i % 2 else "F", "sex_source": "csv" if i % 3 else "dicom", "boneage_months": months,
           "boneage": f"{int(months // 12)} years {int(months % 12)} months", "age_group": GROUPS[i % 3],
           "age_group_index": i % 3, "age_group_probabilities": {g: round(1 / 3, 4) for g in GROUPS},
           "chronological_age_months": 100.0 + i % 50, "chronological_age_source": "csv",
           "ba_minus_ca_months": months - 100.0 - i % 50, "overlay_path": None,
           "engine": "tensorflow-float32"}

def rejects_of(chunk):
  if chunk % 10 == 0:
    yield {"id": f"bad{chunk}", "source": f"/in/bad{chunk}.png", "reason": "truncated", "detail": "x"}

with beam.Pipeline(runner=fn_runner.FnApiRunner()) as pipeline:
  chunks = pipeline | beam.Create(list(range((num_rows + rows_per_chunk - 1) // rows_per_chunk)))
  scored = scoring.ScoredRows(
      rows=chunks | "Rows" >> beam.FlatMap(rows_of),
      rejects=[chunks | "Rejects" >> beam.FlatMap(rejects_of)],
      tallies=[chunks | "Tallies" >> beam.Map(lambda c: min(rows_per_chunk, num_rows - c * rows_per_chunk) + (c % 10 == 0))],
      worker_tallies=chunks | "Workers" >> beam.Map(lambda c: ("worker", min(rows_per_chunk, num_rows - c * rows_per_chunk))))
  writers.write_outputs(scored, run_dir, GROUPS, gradcam=False)
print("MEMORY_JSON " + json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _write(num_rows: int, run_dir) -> dict:
  proc = subprocess.run([sys.executable, "-c", _CHILD, str(num_rows), str(ROWS_PER_CHUNK), str(run_dir)],
                        capture_output=True, text=True, check=False, timeout=1800)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("MEMORY_JSON ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  counts = json.loads((run_dir / "counts.json").read_text())
  return {**json.loads(lines[0][len("MEMORY_JSON "):]), "counts": counts}


def _lines(run_dir, pattern: str) -> int:
  total = 0
  for path in run_dir.glob(pattern):
    with open(path, "rb") as f:
      total += sum(1 for _ in f)
  return total


@pytest.mark.heavy
@pytest.mark.slow
def test_writer_peak_memory_at_a_million_rows_is_within_15_percent_of_100k(tmp_path):
  small = _write(100_000, tmp_path / "small")
  large = _write(1_000_000, tmp_path / "large")
  for result, rows in ((small, 100_000), (large, 1_000_000)):
    rejected = (rows // ROWS_PER_CHUNK + 9) // 10
    assert result["counts"]["scored"] == rows and result["counts"]["rejected"] == rejected
    assert result["counts"]["read"] == rows + rejected and result["counts"]["read_equals_scored_plus_rejected"]
  assert _lines(tmp_path / "large", "predictions-*.jsonl") == 1_000_000
  shards = sorted((tmp_path / "large").glob("predictions-*.csv"))
  assert _lines(tmp_path / "large", "predictions-*.csv") == 1_000_000 + len(shards)  # a header per shard
  growth = large["peak_rss_mib"] / small["peak_rss_mib"] - 1.0
  print(f"writer peak RSS: 100k rows {small['peak_rss_mib']:.0f} MiB, 1M rows {large['peak_rss_mib']:.0f} MiB "
        f"({growth:+.1%})")
  assert growth <= 0.15
