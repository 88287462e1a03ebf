"""beam_pipelines.progress: counts from worker processes summed while the job runs, and the line it prints."""

import io
import re

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import progress
from beam_pipelines import runners


def test_line_has_done_total_rate_and_eta():
  line = progress.progress_line("scoring", 250, 1000, 100.0, unit="inputs")
  assert line == "scoring: 250/1000 inputs (25%) · 2.5 inputs/s · ETA 5m00s"
  assert progress.progress_line("build", 10, None, 5.0) == "build: 10 images · 2.0 images/s"
  assert progress.format_duration(3725) == "1h02m"


def _count_with_monitor(beam_args):
  out = io.StringIO()
  options = PipelineOptions(runners.resolve_runner_args(beam_args))
  with progress.ProgressMonitor("numbers", total=40, unit="items", interval_s=0.5, stream=out) as monitor:
    with beam.Pipeline(options=options) as p:
      _ = (p | beam.Create(range(40)) | beam.Reshuffle()
           | progress.CountProgress(monitor.progress_dir, monitor.stage))
  return out.getvalue().strip().splitlines()


def test_monitor_counts_every_item_in_process():
  lines = _count_with_monitor([])
  assert re.fullmatch(r"numbers: 40/40 items \(100%\) · [0-9.]+ items/s", lines[-1]), lines


@pytest.mark.heavy
@pytest.mark.slow  # starts two Beam worker processes
def test_monitor_counts_every_item_of_a_two_process_job():
  lines = _count_with_monitor(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
  assert re.fullmatch(r"numbers: 40/40 items \(100%\) · [0-9.]+ items/s", lines[-1]), lines
