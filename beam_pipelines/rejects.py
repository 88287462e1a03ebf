"""Rejected inputs: one tagged output, one counter and one JSON-lines file.

A job never crashes on, nor silently drops, an input a user got wrong. Every
DoFn that can refuse an input yields `reject(error, id)` on the `REJECTS_TAG`
output; the job flattens those outputs into `WriteJsonLines`, so the user gets
one file listing each refused input with its id, source, reason and detail,
and the Beam counters give the same numbers per reason.
"""

import json

import apache_beam as beam

from bone_age.errors import InputError

REJECTS_TAG = "rejects"
COUNTER_NAMESPACE = "boneage"
REJECTED_COUNTER_PREFIX = "rejected_"


def reject(error: InputError, example_id: str | None) -> beam.pvalue.TaggedOutput:
  """The rejects-tagged output for `error`, counted per reason.

  Call it inside a DoFn's `process` (Beam metrics are only collected there).

  Args:
    error: What is wrong with the input, and which input.
    example_id: The example id when known (label-table id or file stem).

  Returns:
    A TaggedOutput carrying the JSON-serialisable rejects record.
  """
  beam.metrics.Metrics.counter(COUNTER_NAMESPACE, REJECTED_COUNTER_PREFIX + error.reason).inc()
  return beam.pvalue.TaggedOutput(REJECTS_TAG, error.to_record(example_id))


class EmitRejectsFn(beam.DoFn):
  """Turns InputErrors found outside the pipeline into counted rejects.

  Label tables are validated by the launcher (splits and age-group edges need
  all labels first); routing their errors through this DoFn gives them the
  same counters and the same rejects file as errors found by the workers.
  """

  def process(self, item: tuple[InputError, str | None]):
    error, example_id = item
    yield reject(error, example_id)


def _record_sort_key(record: dict) -> tuple:
  return (str(record.get("source")), str(record.get("reason")), str(record.get("id")), str(record.get("detail")))


def _write_sorted(records: list[dict], path: str) -> str:
  """Writes one JSON object per line, sorted so reruns give identical files."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  lines = [json.dumps(r, sort_keys=True) + "\n" for r in sorted(records, key=_record_sort_key)]
  with FileSystems.create(path) as f:
    f.write("".join(lines).encode("utf-8"))
  return path


class WriteJsonLines(beam.PTransform):
  """Writes a PCollection of dicts to ONE JSON-lines file, replacing it.

  Rejects are few (a fraction of the inputs), so they are gathered on one
  worker and sorted: the file is the same whatever the runner or the number
  of workers, and an empty PCollection still writes an empty file so a stale
  file from an earlier run never survives.
  """

  def __init__(self, path: str):
    super().__init__()
    self._path = path

  def expand(self, records):
    return (
        records
        | "Gather" >> beam.combiners.ToList()
        | "Write" >> beam.Map(_write_sorted, path=self._path))
