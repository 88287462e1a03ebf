"""Progress lines for local Beam jobs: items done, rate and ETA while the job runs.

Beam's local FnApiRunner (DirectRunner, in-process or multi_processing) and
the Dask runner return their PipelineResult, and with it the metrics, only
once the job has finished, so counters cannot be polled while it runs. Here
each worker process keeps its own count of the items that passed a
`CountProgress` step and rewrites one small file with it (at most once per
`WRITE_INTERVAL_S`, and at the end of each bundle); `ProgressMonitor`, on the
launching machine, sums the files every few seconds and prints

  scoring: 120/1000 images (12%) · 3.2 images/s · ETA 4m35s
  dataset build: 180/640 images (28%) (train 150, validation 20, test 10, rejected 0) · 6.1 images/s · ETA 1m12s
  scoring: 40/120 inputs listed so far (33%) · 3.2 inputs/s · ETA at least 25s

The files live in a local temporary folder, so this works for every worker
on this machine (DirectRunner, a local Dask cluster). A worker that cannot
write there (a remote cluster) counts nothing and the job runs unchanged:
progress is best effort and never fails a job.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

import apache_beam as beam

WRITE_INTERVAL_S = 1.0
DEFAULT_PRINT_INTERVAL_S = 15.0
# The dataset build's parts: each split's written examples, and the rejects, which together reach the label rows.
REJECTED_PART = "rejected"
BUILD_PARTS = ("train", "validation", "test", REJECTED_PART)


def format_duration(seconds: float) -> str:
  """'45s', '4m35s', '1h02m'."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def progress_line(label: str, done: int, total: int | None, elapsed_s: float, unit: str = "images",
                  by_part: dict[str, int] | None = None, total_is_final: bool = True) -> str:
  """'label: done/total unit (pct%) · rate unit/s · ETA 4m35s'; without a total, done and rate only.

  by_part (e.g. per split) is shown after the count: '(train 150, validation 20)'. A total that is still
  growing (archive members listed so far) is said so, and its ETA is a lower bound:
  'scoring: 40/120 inputs listed so far (33%) · 3.2 inputs/s · ETA at least 25s'.
  """
  rate = done / elapsed_s if elapsed_s > 0 else 0.0
  if total:
    so_far = "" if total_is_final else " listed so far"
    head = f"{label}: {done}/{total} {unit}{so_far} ({100 * done / total:.0f}%)"
  else:
    head = f"{label}: {done} {unit}"
  if by_part:
    head += " (" + ", ".join(f"{name} {n}" for name, n in by_part.items()) + ")"
  parts = [head, f"{rate:.1f} {unit}/s"]
  if total and rate > 0 and done < total:
    parts.append(f"ETA {'' if total_is_final else 'at least '}{format_duration((total - done) / rate)}")
  return " · ".join(parts)


class _CountFn(beam.DoFn):
  """Passes elements through; keeps this process's count in <progress_dir>/<stage>-<host>-<pid>.json.

  sum_values: add each element (an int) instead of 1.
  """

  # One count per worker process and stage, shared by the DoFn instances of that process.
  _counts: dict[str, int] = {}
  _last_write: dict[str, float] = {}
  _lock = threading.Lock()

  def __init__(self, progress_dir: str, stage: str, sum_values: bool = False):
    super().__init__()
    self._progress_dir = progress_dir
    self._stage = stage
    self._sum_values = sum_values

  def _path(self) -> str:
    return os.path.join(self._progress_dir, f"{self._stage}-{socket.gethostname()}-{os.getpid()}.json")

  def _write(self, force: bool) -> None:
    path = self._path()
    with self._lock:
      now = time.monotonic()
      if not force and now - self._last_write.get(path, 0.0) < WRITE_INTERVAL_S:
        return
      self._last_write[path] = now
      count = self._counts.get(path, 0)
    try:
      tmp = f"{path}.tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"done": count}, f)
      os.replace(tmp, path)
    except OSError:
      pass  # not this machine's folder (remote worker) or already removed: progress is best effort

  def process(self, element):
    path = self._path()
    with self._lock:
      self._counts[path] = self._counts.get(path, 0) + (int(element) if self._sum_values else 1)
    self._write(force=False)
    yield element

  def finish_bundle(self):
    self._write(force=True)


class CountProgress(beam.PTransform):
  """Identity step whose items (or, with sum_values, their int values) a ProgressMonitor on progress_dir counts."""

  def __init__(self, progress_dir: str, stage: str, sum_values: bool = False):
    super().__init__()
    self._progress_dir = progress_dir
    self._stage = stage
    self._sum_values = sum_values

  def expand(self, pcoll):
    return pcoll | beam.ParDo(_CountFn(self._progress_dir, self._stage, self._sum_values))


def count_done(progress_dir: str, stage: str) -> int:
  """The sum of every worker's count for stage (files being replaced are skipped this time)."""
  done = 0
  try:
    names = os.listdir(progress_dir)
  except OSError:
    return 0
  for name in names:
    if name.startswith(f"{stage}-") and name.endswith(".json"):
      try:
        with open(os.path.join(progress_dir, name), encoding="utf-8") as f:
          done += int(json.load(f)["done"])
      except (OSError, ValueError, KeyError):
        continue
  return done


class ProgressMonitor:
  """Context manager: a temporary progress folder and a thread printing a progress line every interval_s.

  Usage:
    with ProgressMonitor("scoring", total=n) as monitor:
      pipeline | ... | CountProgress(monitor.progress_dir, monitor.stage) ...
      pipeline.run().wait_until_finish()
  """

  def __init__(self, label: str, total: int | None = None, interval_s: float = DEFAULT_PRINT_INTERVAL_S,
               unit: str = "images", stream=None, enabled: bool = True, parts: tuple[str, ...] = (),
               counts_listing: bool = False, listing_units: int | None = None):
    """Args:
      parts: sub-stages counted apart (CountProgress(progress_dir, stage_of(part))) and shown by name.
      counts_listing: the total is not known up front: the job counts it while listing, summing the inputs each
        listed file gave (CountProgress(progress_dir, listed_stage, sum_values=True)) and counting the files
        (CountProgress(progress_dir, listed_units_stage)).
      listing_units: how many files (and patterns matching none) the listing covers, when known: the total is
        final once that many are listed; otherwise only once the job has finished.
    """
    self.label = label
    self.counts_listing = counts_listing
    self._listing_units = listing_units
    self.stage = "".join(c if c.isalnum() else "_" for c in label)
    self.parts = tuple(parts)
    self.total = total
    self.unit = unit
    self.progress_dir = ""
    self._interval_s = interval_s
    self._stream = stream
    self._enabled = enabled
    self._stop = threading.Event()
    self._thread = None
    self._start = 0.0
    self._last_printed = -1

  def __enter__(self) -> "ProgressMonitor":
    self.progress_dir = tempfile.mkdtemp(prefix="boneage-progress-")
    self._start = time.monotonic()
    if self._enabled:
      self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
      self._thread.start()
    return self

  def stage_of(self, part: str) -> str:
    return f"{self.stage}_{part}"

  @property
  def listed_stage(self) -> str:
    return self.stage_of("listed")

  @property
  def listed_units_stage(self) -> str:
    return self.stage_of("listed_units")

  def _total(self, finished: bool) -> tuple[int | None, bool]:
    """(total, whether it is final)."""
    if not self.counts_listing:
      return self.total, True
    listed = count_done(self.progress_dir, self.listed_stage)
    final = finished or (self._listing_units is not None
                         and count_done(self.progress_dir, self.listed_units_stage) >= self._listing_units)
    return listed or None, final

  def _counts(self) -> tuple[int, dict[str, int] | None]:
    if not self.parts:
      return count_done(self.progress_dir, self.stage), None
    by_part = {part: count_done(self.progress_dir, self.stage_of(part)) for part in self.parts}
    return sum(by_part.values()), by_part

  def _print(self, done: int, by_part: dict[str, int] | None, finished: bool = False) -> None:
    stream = self._stream or sys.stdout
    total, final = self._total(finished)
    print(progress_line(self.label, done, total, time.monotonic() - self._start, self.unit, by_part, final),
          file=stream, flush=True)
    self._last_printed = done

  def _loop(self) -> None:
    while not self._stop.wait(self._interval_s):
      done, by_part = self._counts()
      if done and done != self._last_printed:
        self._print(done, by_part)

  def __exit__(self, exc_type, exc, tb) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      done, by_part = self._counts()
      if exc_type is None and done != self._last_printed:
        self._print(done, by_part, finished=True)
    shutil.rmtree(self.progress_dir, ignore_errors=True)
