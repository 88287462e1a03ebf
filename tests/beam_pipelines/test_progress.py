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
  assert progress.format_duration(59.6) == "1m00s" and progress.format_duration(-3) == "0s"


def test_build_line_has_the_splits_and_a_growing_total_says_so():
  build = progress.progress_line("dataset build", 180, 640, 30.0,
                                 by_part={"train": 150, "validation": 20, "test": 10, "rejected": 0})
  assert build == ("dataset build: 180/640 images (28%) (train 150, validation 20, test 10, rejected 0) · "
                   "6.0 images/s · ETA 1m17s")
  listing = progress.progress_line("scoring", 40, 120, 10.0, unit="inputs", total_is_final=False)
  assert listing == "scoring: 40/120 inputs listed so far (33%) · 4.0 inputs/s · ETA at least 20s"
  assert "ETA" not in progress.progress_line("scoring", 120, 120, 10.0, unit="inputs")


@pytest.mark.parametrize("listing_units, final", [(2, True), (3, False), (None, False)])
def test_a_total_counted_while_listing_is_final_once_every_file_is_listed(listing_units, final):
  """Two files listed, giving 3 and 2 inputs: the total is 5, final only when 2 files were all to list."""
  monitor = progress.ProgressMonitor("scoring", unit="inputs", enabled=False, counts_listing=True,
                                     listing_units=listing_units)
  with monitor:
    with beam.Pipeline(options=PipelineOptions(runners.resolve_runner_args([]))) as p:
      tallies = p | beam.Create([3, 2])
      _ = tallies | "Listed" >> progress.CountProgress(monitor.progress_dir, monitor.listed_stage, sum_values=True)
      _ = tallies | "Files" >> progress.CountProgress(monitor.progress_dir, monitor.listed_units_stage)
    assert monitor._total(finished=False) == (5, final)  # pylint: disable=protected-access
    assert monitor._total(finished=True) == (5, True)  # pylint: disable=protected-access


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
