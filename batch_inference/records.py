"""The per-image steps around RunInference and the rows the scorer writes.

Before the model: attach the subject (sex, age and their sources) and shrink
the original for its overlay. After the model: one output row per scored
subject, the overlay written right away, and duplicate ids settled. The
rows are written by batch_inference.writers.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import socket

import apache_beam as beam
import numpy as np

from bone_age import errors
from bone_age import reference
from bone_age import quality
from bone_age import reporting
from beam_pipelines import rejects
from batch_inference import handler
from batch_inference import overlays
from batch_inference import patients
from batch_inference import sources

WORKER_TALLY_TAG = "worker_tally"  # (worker id, 1) per image, from the process that ran the model


@dataclasses.dataclass
class ScoreKey:
  """What travels beside a ScoreRequest through RunInference (KeyedModelHandler key)."""
  id: str
  source: str
  subject: patients.Subject
  transform: object  # bone_age.letterbox.LetterboxTransform
  overlay_original: np.ndarray | None  # downscaled (h, w) uint8, only with Grad-CAM
  suffix: str  # '' or '-M' / '-F' under --unknown_sex=both, for the overlay name
  counts_image: bool = True  # False for the second subject of one image (--unknown_sex=both)
  quality_flags: tuple = ()  # (code, detail) pairs from the quality gate (PreparedImage.quality_flags)
  input_sha256: str | None = None  # sha256 of the input's bytes (the file or archive member)


class PrepareRequestFn(beam.DoFn):
  """(PreparedImage, MetadataRow or None[, input sha256]) -> (ScoreKey, ScoreRequest) per subject, or an
  unknown-sex / bad-label reject."""

  def __init__(self, unknown_sex: str, overlay_max_px: int | None):
    super().__init__()
    self._unknown_sex = unknown_sex
    self._overlay_max_px = overlay_max_px

  def process(self, element):
    prepared, row, *digest = element
    try:
      subjects = patients.resolve_subjects(prepared.id, prepared.source, prepared.patient, row, self._unknown_sex)
    except errors.InputError as e:
      yield rejects.reject(e, prepared.id)
      return
    small = None
    if self._overlay_max_px and prepared.original is not None:
      small = overlays.downscale(prepared.original, self._overlay_max_px)
    for i, subject in enumerate(subjects):
      suffix = f"-{subject.sex}" if len(subjects) > 1 else ""
      key = ScoreKey(prepared.id, prepared.source, subject, prepared.transform, small, suffix, counts_image=i == 0,
                     quality_flags=tuple(prepared.quality_flags), input_sha256=digest[0] if digest else None)
      yield key, handler.ScoreRequest(prepared.image, subject.male)


def _round(value: float | None, digits: int = 3) -> float | None:
  return None if value is None else round(float(value), digits)


def prediction_row(key: ScoreKey, inference: handler.Inference, group_names: list[str],
                   ood_stats=None, run_fields: dict | None = None, interval: dict | None = None) -> dict:
  """The output row of one scored subject (JSON-serialisable).

  `quality_flags` lists the gate's decision codes (bone_age.quality: a
  mirrored right hand, corrected polarity, a doubt about the content) and
  `quality_flag_reasons` the same decisions in words, so no correction or
  doubt is invisible in the predictions. With the export's OOD statistics
  (bone_age.ood), `ood_score` is the embedding's distance from training and
  a score above the calibrated threshold adds the `out_of_distribution` flag.

  `boneage_months` is the mean of the TTA views (the plain prediction
  without TTA) and `boneage_tta_sd_months` their spread. With the export's
  conformal calibration (`interval`: half-width and level), the row has the
  interval [`interval_low_months`, `interval_high_months`] at
  `interval_level`; without one, `interval_missing_reason` says why. Every
  row carries the run's provenance (`run_fields`: model id, experiment,
  checkpoint, dataset, software version, run start) and its input's
  `input_sha256`.
  """
  subject = key.subject
  months = float(inference.boneage_months)
  probs = [float(p) for p in inference.group_probabilities]
  group = int(np.argmax(probs))
  age = subject.chronological_age_months
  flags = list(key.quality_flags)
  ood_score = None
  embedding = getattr(inference, "embedding", None)
  if ood_stats is not None and embedding is not None:
    from bone_age import ood  # pylint: disable=g-import-not-at-top
    ood_score = float(ood.scores(ood_stats, embedding)[0])
    if ood_score > ood_stats.threshold:
      flags.append((quality.OUT_OF_DISTRIBUTION, f"ood_score {ood_score:.3g} above the threshold {ood_stats.threshold:.3g} "
                                         f"(validation {ood_stats.percentile:g}th percentile)"))
  row = {
      "id": key.id,
      "file": sources.source_file(key.id, key.source),
      "sex": subject.sex,
      "sex_source": subject.sex_source,
      "boneage_months": _round(months),
      "boneage": reporting.format_years_months(months),
      "age_group": group_names[group],
      "age_group_index": group,
      "age_group_probabilities": {name: _round(p, 4) for name, p in zip(group_names, probs)},
      "chronological_age_months": _round(age),
      "chronological_age_source": subject.chronological_age_source,
      "ba_minus_ca_months": None if age is None else _round(months - age),
      "overlay_path": None,
      "engine": inference.engine,  # engine and precision that computed this row (engines.label)
      "quality_flags": [code for code, _ in flags],
      "quality_flag_reasons": [f"{code}: {detail}" for code, detail in flags],
      "ood_score": _round(ood_score, 4),
  }
  row.update(reference.sds_columns(months, age, subject.sex))
  row.update(interval_columns(months, inference.tta_sd_months, interval))
  row["input_sha256"] = key.input_sha256
  row.update(run_fields or {})
  return row


def interval_columns(months: float, tta_sd_months: float | None, interval: dict | None) -> dict:
  """The row's TTA spread and conformal interval columns (bone_age.conformal)."""
  out = {"boneage_tta_sd_months": _round(tta_sd_months), "interval_level": None, "interval_low_months": None,
         "interval_high_months": None, "interval_missing_reason": None}
  if interval and interval.get("half_width_months") is not None:
    from bone_age import conformal  # pylint: disable=g-import-not-at-top
    low, high = conformal.bounds(months, interval["half_width_months"])
    out.update(interval_level=interval["level"], interval_low_months=_round(low),
               interval_high_months=_round(high))
  else:
    out["interval_missing_reason"] = (interval or {}).get("missing_reason", "no interval calibration")
  return out


def worker_id() -> str:
  """This process, as `host:pid`: which worker scored an image."""
  return f"{socket.gethostname()}:{os.getpid()}"


class FinishPredictionFn(beam.DoFn):
  """(ScoreKey, PredictionResult) -> output row; writes the Grad-CAM overlay if any.

  Also emits, on WORKER_TALLY_TAG, (worker id, 1) per scored image: this DoFn
  runs fused with RunInference, so the id is the process that ran the model.
  """

  def __init__(self, run_dir: str, group_names: list[str], model_id: str | None = None,
               export_dir: str | None = None, run_fields: dict | None = None, interval: dict | None = None):
    super().__init__()
    self._run_fields = dict(run_fields or {})
    self._interval = interval
    self._run_dir = run_dir
    self._model_id = model_id
    self._group_names = list(group_names)
    self._export_dir = export_dir
    self._ood_stats = None
    self._scored = beam.metrics.Metrics.counter("boneage", "scored")

  def process(self, element):
    key, result = element
    inference = result.inference
    row = prediction_row(key, inference, self._group_names, self._ood_stats, self._run_fields, self._interval)
    if inference.heatmap is not None and key.overlay_original is not None:
      name = overlays.overlay_file_name(key.id, key.source, key.suffix)
      heat = overlays.heatmap_on_original(key.transform, inference.heatmap, key.overlay_original.shape)
      overlays.write_png(posixpath.join(self._run_dir, overlays.OVERLAYS_DIR, name),
                         overlays.render(key.overlay_original, heat, row, self._model_id))
      row["overlay_path"] = f"{overlays.OVERLAYS_DIR}/{name}"
    self._scored.inc()
    if key.counts_image:
      yield beam.pvalue.TaggedOutput(WORKER_TALLY_TAG, (self._worker_id, 1))
    yield row

  def setup(self):
    self._worker_id = worker_id()
    if self._export_dir:
      from bone_age import ood  # pylint: disable=g-import-not-at-top
      self._ood_stats = ood.load(self._export_dir)  # None for an export made without OOD statistics


class SettleDuplicateIdsFn(beam.DoFn):
  """(id, rows) -> the rows of ONE source; every other source with that id is rejected.

  Two inputs can share an id (a/1.png and b/1.png). Keeping the first source
  in sort order makes the choice stable across runs and runners; the others
  are reported, not dropped.
  """

  def process(self, element):
    example_id, rows = element
    rows = list(rows)
    kept = min(r["file"] for r in rows)  # one id and one file: one input
    for file in sorted({r["file"] for r in rows} - {kept}):
      yield rejects.reject(errors.InputError(sources.input_path(example_id, file), errors.DUPLICATE_ID,
                                             f"id {example_id!r} is already given by "
                                             f"{sources.input_path(example_id, kept)}"), example_id)
    for row in sorted((r for r in rows if r["file"] == kept), key=lambda r: r["sex"]):
      yield row
