"""The scorer's writers: sharded row files and one small counts file, per run.

Rows stream into Beam's sharded text sinks (`WriteToText`, runner-chosen
shard count): no step gathers the rows on one key or sorts them, so memory
does not grow with the number of rows. Every number the summary needs (read,
scored, rejected by reason, sex and age sources, overlays, images per worker)
is computed inside the pipeline by one combiner and written to
`counts.json`, so the launcher never reads a row.

Files written into the run directory:
  predictions-SSSSS-of-NNNNN.jsonl  one JSON object per row
  predictions-SSSSS-of-NNNNN.csv    the same rows, each shard with the header
  rejects-SSSSS-of-NNNNN.jsonl      one rejects record per refused input
  counts.json                       the combiner's counts
Row order inside and across shards is whatever the runner produced; readers
sort (batch_inference.results does).
"""

from __future__ import annotations

import collections
import csv
import io
import json
import re

import apache_beam as beam

from bone_age import age_groups
from bone_age import errors
from bone_age import provenance
from batch_inference import overlays
from batch_inference import patients
from batch_inference import runs
from batch_inference import sources

PREDICTIONS_PREFIX = "predictions"
REJECTS_PREFIX = "rejects"
JSONL_SUFFIX = ".jsonl"
CSV_SUFFIX = ".csv"
COUNTS_JSON = "counts.json"

# Columns of the predictions CSV shards (the JSONL shards hold the same values,
# with the group probabilities as one {group name: probability} object).
BASE_COLUMNS = (
    "id", "file", "sex", "sex_source", "boneage_months", "boneage", "age_group", "age_group_index",
    "chronological_age_months", "chronological_age_source", "ba_minus_ca_months", "sds", "sds_reading",
    "sds_missing_reason", "overlay_path", "quality_flags", "ood_score", "engine")
# The TTA spread and conformal interval (records.interval_columns), then the provenance (bone_age.provenance).
INTERVAL_COLUMNS = ("boneage_tta_sd_months", "interval_level", "interval_low_months", "interval_high_months",
                    "interval_missing_reason")
PROVENANCE_COLUMNS = ("input_sha256", *provenance.ROW_FIELDS)
ROW_COLUMNS = (*BASE_COLUMNS, *INTERVAL_COLUMNS, *PROVENANCE_COLUMNS)

# Tags of the items the counting combiner sees.
_READ, _ROW, _REJECT, _WORKER = "read", "row", "reject", "worker"


# Month values in the written rows are rounded to this many decimals: a tenth of a month is far below the
# model's error, and more digits would suggest a precision it does not have.
MONTHS_DECIMALS = 1
_MONTHS_FIELDS = ("boneage_months", "chronological_age_months", "ba_minus_ca_months", "boneage_tta_sd_months",
                  "interval_low_months", "interval_high_months")


def probability_columns(group_names: list[str]) -> list[str]:
  """CSV columns of the group probabilities, named as the evaluator names them: '<113 mo' ->
  'prob_under_113_months', '113-150 mo' -> 'prob_113_to_150_months', '>=150 mo' -> 'prob_150_months_and_over';
  other names as lower-case words ('Early puberty' -> 'prob_early_puberty')."""
  try:
    slugs = age_groups.group_slugs(age_groups.edges_from_names(group_names))
  except ValueError:  # names an export chose itself: lower-case words joined by '_'
    slugs = [re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") for name in group_names]
  return [f"prob_{slug}" for slug in slugs]


def csv_columns(group_names: list[str]) -> list[str]:
  return list(ROW_COLUMNS) + probability_columns(group_names)


def rounded(row: dict) -> dict:
  """The row with its month values rounded to MONTHS_DECIMALS (the written form; the model's floats stay
  unrounded in the pipeline, for the DICOM outputs)."""
  out = dict(row)
  for name in _MONTHS_FIELDS:
    if isinstance(out.get(name), float):
      out[name] = round(out[name], MONTHS_DECIMALS)
  return out


def _csv_line(values: list) -> str:
  out = io.StringIO()
  csv.writer(out, lineterminator="").writerow(values)
  return out.getvalue()


def csv_header(group_names: list[str]) -> str:
  return _csv_line(csv_columns(group_names))


def csv_row(row: dict, group_names: list[str]) -> str:
  """One predictions row as a CSV line (no line end: the text sink adds it)."""
  values = [row.get(c) for c in ROW_COLUMNS]  # a column a row lacks stays empty
  values = ["" if v is None else ";".join(v) if isinstance(v, list) else v for v in values]
  values += [row["age_group_probabilities"][name] for name in group_names]
  return _csv_line(values)


def _json_line(record: dict) -> str:
  # ensure_ascii (the default) keeps any id writable whatever its characters.
  return json.dumps(record, sort_keys=True)


class WritePredictions(beam.PTransform):
  """Rows -> predictions-*.jsonl and predictions-*.csv shards in run_dir."""

  def __init__(self, run_dir: str, group_names: list[str]):
    super().__init__()
    self._prefix = runs.join(run_dir, PREDICTIONS_PREFIX)
    self._group_names = list(group_names)

  def expand(self, rows):
    group_names = self._group_names
    rows = rows | "RoundMonths" >> beam.Map(rounded)
    _ = (rows
         | "ToJson" >> beam.Map(_json_line)
         | "WriteJsonl" >> beam.io.WriteToText(self._prefix, file_name_suffix=JSONL_SUFFIX))
    return (rows
            | "ToCsv" >> beam.Map(csv_row, group_names=group_names)
            | "WriteCsv" >> beam.io.WriteToText(self._prefix, file_name_suffix=CSV_SUFFIX,
                                                header=csv_header(group_names)))


def reject_row(record: dict) -> dict:
  """A rejects record as written: id, file (the file or archive read, as in the prediction rows), reason, detail."""
  return {"id": record.get("id"), "file": sources.source_file(record.get("id"), record["source"]),
          "reason": record["reason"], "detail": record["detail"]}


class WriteRejects(beam.PTransform):
  """Rejects records -> rejects-*.jsonl shards in run_dir (an empty shard when there are none)."""

  def __init__(self, run_dir: str):
    super().__init__()
    self._prefix = runs.join(run_dir, REJECTS_PREFIX)

  def expand(self, records):
    return (records
            | "FileColumn" >> beam.Map(reject_row)
            | "ToJson" >> beam.Map(_json_line)
            | "WriteJsonl" >> beam.io.WriteToText(self._prefix, file_name_suffix=JSONL_SUFFIX))


class _TallyFn(beam.CombineFn):
  """Tagged items -> a few small Counters (the tallies of one input PCollection)."""

  def create_accumulator(self):
    return collections.defaultdict(collections.Counter)

  def add_input(self, accumulator, item):
    tag, value = item
    if tag == _READ:
      accumulator[_READ]["inputs"] += int(value)
    elif tag == _ROW:
      sex_source, age_source, has_overlay, flag_codes, dicom_outcomes, engine = value
      for name, outcome in dicom_outcomes:  # DICOM outputs and PACS sending, when asked for
        accumulator[name][outcome] += 1
      accumulator["rows_by_engine"][engine] += 1
      accumulator["rows"]["all"] += 1
      accumulator["flagged_rows_by_code"].update(flag_codes)
      accumulator["rows"]["assumed_both"] += sex_source == patients.SEX_ASSUMED_BOTH
      accumulator["rows"]["overlays"] += has_overlay
      accumulator["sex_sources"][sex_source] += 1
      accumulator["chronological_age_sources"][age_source or "unknown"] += 1
    elif tag == _REJECT:
      accumulator["rejected_by_reason"][value] += 1
    elif tag == _WORKER:
      worker_id, images = value
      accumulator["scored_per_worker"][str(worker_id)] += int(images)
    return accumulator

  def merge_accumulators(self, accumulators):
    merged = self.create_accumulator()
    for accumulator in accumulators:
      for name, counter in accumulator.items():
        merged[name].update(counter)
    return merged

  def extract_output(self, accumulator):
    return {name: dict(counter) for name, counter in accumulator.items()}


class CountOutputsFn(beam.CombineFn):
  """The tallies of every input PCollection -> the run's counts.

  Under --unknown_sex=both an image gives exactly two rows (F and M, both
  `assumed_both`), so `scored` (images) is the rows minus half of those:
  no per-image key has to be shuffled to count distinct images.
  """

  def create_accumulator(self):
    return collections.defaultdict(collections.Counter)

  def add_input(self, accumulator, tallies):
    for name, counts in tallies.items():
      accumulator[name].update(counts)
    return accumulator

  def merge_accumulators(self, accumulators):
    return _TallyFn().merge_accumulators(accumulators)

  def extract_output(self, accumulator):
    rows = accumulator["rows"]
    rejected = sum(accumulator["rejected_by_reason"].values())
    scored = rows["all"] - rows["assumed_both"] // 2
    read = accumulator[_READ]["inputs"]
    return {
        "read": read,
        "scored": scored,
        "rejected": rejected,
        "read_equals_scored_plus_rejected": read == scored + rejected,
        "prediction_rows": rows["all"],
        "overlays": rows["overlays"],
        "rejected_by_reason": dict(sorted(accumulator["rejected_by_reason"].items())),
        "sex_sources": dict(sorted(accumulator["sex_sources"].items())),
        "chronological_age_sources": dict(sorted(accumulator["chronological_age_sources"].items())),
        "scored_per_worker": dict(sorted(accumulator["scored_per_worker"].items())),
        "rows_by_engine": dict(sorted(accumulator["rows_by_engine"].items())),
        **{name: dict(sorted(accumulator[name].items())) for name in ("dicom_outputs_by_status", "dicomweb_by_status")
           if accumulator.get(name)},
        "flagged_rows_by_code": dict(sorted(accumulator["flagged_rows_by_code"].items())),
    }


def _outcome(status: str) -> str:
  """'written' / 'stored' / 'not_dicom' as they are; every 'failed: <why>' counted as 'failed'."""
  return status.split(":", 1)[0]


def _row_item(row: dict) -> tuple:
  dicom_outcomes = tuple((name, _outcome(row[key])) for name, key in (("dicom_outputs_by_status", "dicom_status"),
                                                                      ("dicomweb_by_status", "dicomweb_status")) if row.get(key))
  return _ROW, (row["sex_source"], row["chronological_age_source"], bool(row.get("overlay_path")),
                tuple(row.get("quality_flags") or ()), dicom_outcomes, row["engine"])


def _write_counts(counts: dict, path: str) -> dict:
  runs.write_text(path, json.dumps(counts, indent=2, sort_keys=True) + "\n")
  return counts


class WriteCounts(beam.PTransform):
  """(rows, rejects, read tallies, worker tallies) -> counts.json in run_dir.

  Takes a dict of PCollections: `rows` (prediction rows), `rejects`
  (rejects records), `read` (ints: inputs read per file or pattern) and
  `worker` ((worker id, images scored) pairs).
  """

  def __init__(self, run_dir: str):
    super().__init__()
    self._path = runs.join(run_dir, COUNTS_JSON)

  def expand(self, pcolls):
    tags = {"rows": _row_item, "rejects": lambda r: (_REJECT, r["reason"]), "read": lambda n: (_READ, n),
            "worker": lambda kv: (_WORKER, tuple(kv))}
    # Each input is tallied where it is produced (the combiner runs partly in
    # the producing stage); only the few tallies are then brought together.
    # Flattening the inputs first would make some runners buffer every row.
    tallies = [pcolls[name]
               | f"Tag_{name}" >> beam.Map(tags[name])
               | f"Tally_{name}" >> beam.CombineGlobally(_TallyFn())
               for name in ("rows", "rejects", "read", "worker")]
    return (tallies
            | "FlattenTallies" >> beam.Flatten()
            | "Count" >> beam.CombineGlobally(CountOutputsFn())
            | "Write" >> beam.Map(_write_counts, path=self._path))


def delete_loser_overlays(record: dict, run_dir: str) -> int:
  """Deletes the overlays of an input that lost a duplicate-id contest.

  Overlays are written before duplicate ids are settled; the loser's names
  follow from its id and source (overlays.overlay_file_name), so they can be
  removed here, inside the pipeline, without listing the overlays.
  """
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top

  names = [overlays.overlay_file_name(record["id"], record["source"], suffix) for suffix in ("", "-M", "-F")]
  paths = [runs.join(run_dir, overlays.OVERLAYS_DIR, name) for name in names]
  present = [p for p in paths if FileSystems.exists(p)]
  if present:
    FileSystems.delete(present)
  return len(present)


def write_outputs(scored, run_dir: str, group_names: list[str], gradcam: bool):
  """Adds the writers of every file of a run, except its summary and manifest.

  Args:
    scored: batch_inference.pipeline.ScoredRows (rows, rejects, tallies and,
      when present, worker_tallies).
    run_dir: The run's directory.
    group_names: Age-group names (CSV probability columns).
    gradcam: Whether overlays were written (duplicate-id losers' are deleted).

  Returns:
    The PCollection holding the counts dict once counts.json is written.
  """
  pipeline = scored.rows.pipeline
  all_rejects = tuple(scored.rejects) | "FlattenRejects" >> beam.Flatten(pipeline=pipeline)
  tallies = tuple(scored.tallies) | "FlattenTallies" >> beam.Flatten(pipeline=pipeline)
  _ = scored.rows | "WritePredictions" >> WritePredictions(run_dir, group_names)
  _ = all_rejects | "WriteRejects" >> WriteRejects(run_dir)
  if gradcam:
    _ = (all_rejects
         | "DuplicateIdLosers" >> beam.Filter(lambda r: r["reason"] == errors.DUPLICATE_ID and r.get("id") is not None)
         | "DeleteLoserOverlays" >> beam.Map(delete_loser_overlays, run_dir=run_dir))
  counted = {"rows": scored.rows, "rejects": all_rejects, "read": tallies, "worker": scored.worker_tallies}
  return counted | "WriteCounts" >> WriteCounts(run_dir)
