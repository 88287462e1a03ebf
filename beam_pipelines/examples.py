"""Labeled image records -> TFDS examples, with rejects and counters.

`BuildExamples` is the image stage of the dataset build: it reads each
labeled image, decodes, validates and letterboxes it (`transforms`), encodes
the square as PNG and emits `(split, (key, example))`. Rejected images and
rejected label rows (from the label stage of the same job) meet in one
rejects file. Reading and decoding happen in the same fused step as the record, so
image bytes never cross a shuffle.
"""

import dataclasses

import apache_beam as beam

from bone_age import imaging
from bone_age import quality
from bone_age import schema
from beam_pipelines import progress
from beam_pipelines import rejects
from beam_pipelines import transforms

EXAMPLES_TAG = "examples"
# Fastest PNG settings measured on letterboxed radiographs (384 px: 1.3 ms and
# 60 KB per image vs 2.9 ms and 68 KB with zlib level 1 defaults): the black
# padding and smooth bone compress well with run-length coding after the UP filter.
_PNG_PARAMS = (("IMWRITE_PNG_COMPRESSION", 1), ("IMWRITE_PNG_STRATEGY", "IMWRITE_PNG_STRATEGY_RLE"),
               ("IMWRITE_PNG_FILTER", "IMWRITE_PNG_FILTER_UP"))  # the filter option needs OpenCV >= 4.10


def png_params(cv2) -> list[int]:
  """cv2.imencode parameters from `_PNG_PARAMS`, skipping any this OpenCV lacks."""
  params = []
  for name, value in _PNG_PARAMS:
    value = getattr(cv2, value, None) if isinstance(value, str) else value
    if hasattr(cv2, name) and value is not None:
      params += [getattr(cv2, name), value]
  return params


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One labeled image to turn into an example.

  Attributes:
    id: Example id (label-table id, image file stem).
    path: Image file, or None when the table names an id without a file.
    boneage_months: Label, months.
    male: True for boys.
    age_group: Index over the dataset's age-group edges.
    split: Split the example belongs to.
  """
  id: str
  path: str | None
  boneage_months: float
  male: bool
  age_group: int
  split: str


# Per-split counters: f"split_{split}_{REJECTED}_{reason}",
# f"split_{split}_{FLAGGED}_{code}" and f"split_{split}_{HAND_CROPPED}".
# Label-stage rejects (bad label rows, duplicate ids) happen before an image
# has a split and are counted only in `rejected_by_reason`.
_SPLIT_COUNTER_PREFIX = "split_"
REJECTED, FLAGGED, HAND_CROPPED = "rejected", "flagged", "hand_cropped"


def _count(split: str, kind: str, code: str | None = None) -> None:
  name = f"{_SPLIT_COUNTER_PREFIX}{split}_{kind}" + (f"_{code}" if code else "")
  beam.metrics.Metrics.counter(rejects.COUNTER_NAMESPACE, name).inc()


class RecordToExampleFn(beam.DoFn):
  """ImageRecord -> (split, (id, example dict)), or a reject.

  Composes ReadBytesFn and DecodeLetterboxFn (the scorer's exact decode path)
  in one step, so the record's labels travel with its pixels without a join.
  """

  def __init__(self, size_px: int, max_pixels: int = imaging.DEFAULT_MAX_PIXELS,
               quality_gate: str = quality.DEFAULT_POLICY):
    super().__init__()
    self._size_px = int(size_px)
    self._read = transforms.ReadBytesFn()
    # The gate rejects degenerate images under every policy but off, so none
    # reaches a split; the scorer runs the same gate and crop.
    self._decode = transforms.DecodeLetterboxFn(size_px, max_pixels=max_pixels, quality_gate=quality_gate)

  def setup(self):
    import cv2  # pylint: disable=g-import-not-at-top
    self._cv2 = cv2
    # Parallelism comes from Beam workers; OpenCV's own threads would only
    # oversubscribe the cores the other workers use.
    cv2.setNumThreads(1)
    self._png_params = png_params(cv2)
    self._read.setup()
    self._decode.setup()

  def process(self, record: ImageRecord):
    for read in self._read.process((record.id, record.path)):
      if isinstance(read, beam.pvalue.TaggedOutput):
        _count(record.split, REJECTED, read.value["reason"])
        yield read
        continue
      for prepared in self._decode.process(read):
        if isinstance(prepared, beam.pvalue.TaggedOutput):
          _count(record.split, REJECTED, prepared.value["reason"])
          yield prepared
          continue
        beam.metrics.Metrics.counter(rejects.COUNTER_NAMESPACE, f"examples_{record.split}").inc()
        for code in sorted({code for code, _ in prepared.quality_flags}):
          _count(record.split, FLAGGED, code)
        if prepared.crop_box is not None:
          _count(record.split, HAND_CROPPED)
        yield record.split, (record.id, self._example(record, prepared))

  def _example(self, record: ImageRecord, prepared: transforms.PreparedImage) -> dict:
    # PNG-encode here with OpenCV (fast, no TF graph per worker); the TFDS
    # Image feature stores encoded bytes as they are.
    ok, png = self._cv2.imencode(".png", prepared.image, self._png_params)
    if not ok:
      raise RuntimeError(f"PNG encoding failed for {record.id}")  # not an input problem
    return {
        schema.IMAGE: png.tobytes(),
        schema.BONEAGE_MONTHS: float(record.boneage_months),
        schema.MALE: int(record.male),
        schema.AGE_GROUP: int(record.age_group),
        schema.ID: record.id,
        # The decoded radiograph's size, before the hand crop: what the
        # feature's name promises. The crop box is not stored per example
        # (it would change the dataset's features); the metadata counts the
        # cropped images per split.
        schema.ORIGINAL_HEIGHT_PX: int(prepared.decoded_hw[0]),
        schema.ORIGINAL_WIDTH_PX: int(prepared.decoded_hw[1]),
    }


class BuildExamples(beam.PTransform):
  """(records, label_rejects) -> PCollection[(split, (key, example))]; writes the rejects file(s).

  The input is a pair of PCollections: ImageRecords (labels already
  validated and joined with their image files) and the reject records
  (dicts) of the label stage, which meet the workers' rejects in one file.

  Args:
    size_px: Side of the letterboxed square.
    rejects_paths: Files to write the JSON-lines rejects to (each replaced).
    max_pixels: Decompression-bomb guard.
    quality_gate: The content gate's policy (`bone_age.quality`): strict, flag or off.
    rejects_progress: (progress_dir, stage) of a progress.ProgressMonitor that counts the rejects, so a build's
      progress reaches its total (written + rejected = label rows).
  """

  def __init__(self, size_px: int, rejects_paths=(), max_pixels: int = imaging.DEFAULT_MAX_PIXELS,
               quality_gate: str = quality.DEFAULT_POLICY, rejects_progress: tuple[str, str] | None = None):
    super().__init__()
    self._rejects_progress = rejects_progress
    self._size_px = size_px
    self._rejects_paths = list(rejects_paths)
    self._max_pixels = max_pixels
    self._quality_gate = quality_gate

  def expand(self, records_and_label_rejects):
    records, label_rejects = records_and_label_rejects
    outputs = (
        records
        # Spread records over workers: the reads and decodes are the heavy part.
        | "Spread" >> beam.Reshuffle()
        | "ReadDecodeLetterbox" >> beam.ParDo(RecordToExampleFn(self._size_px, self._max_pixels, self._quality_gate)).with_outputs(
            rejects.REJECTS_TAG, main=EXAMPLES_TAG))
    all_rejects = ((outputs[rejects.REJECTS_TAG], label_rejects) | "FlattenRejects" >> beam.Flatten())
    for i, path in enumerate(self._rejects_paths):
      _ = all_rejects | f"WriteRejects{i}" >> rejects.WriteJsonLines(path)
    if self._rejects_progress is not None:
      _ = all_rejects | "ProgressRejects" >> progress.CountProgress(*self._rejects_progress)
    return outputs[EXAMPLES_TAG]


def _in_split(item, split: str) -> bool:
  return item[0] == split


def _drop_split(item):
  return item[1]


class SelectSplit(beam.PTransform):
  """The examples of one split, as TFDS expects from `_generate_examples`.

  TFDS applies each split's PTransform to the pipeline root; the examples of
  all splits come from one shared `BuildExamples` stage, so this ignores its
  input and filters the shared collection.
  """

  def __init__(self, examples, split: str):
    super().__init__()
    self._examples = examples
    self._split = split

  def expand(self, unused_pbegin):
    return (self._examples
            | "Filter" >> beam.Filter(_in_split, split=self._split)
            | "DropSplit" >> beam.Map(_drop_split))


def counter_totals(pipeline_result) -> dict[str, int]:
  """Sums the job's `boneage` counters by name (committed, else attempted)."""
  from apache_beam.metrics.metric import MetricsFilter  # pylint: disable=g-import-not-at-top
  totals: dict[str, int] = {}
  query = pipeline_result.metrics().query(MetricsFilter().with_namespace(rejects.COUNTER_NAMESPACE))
  for counter in query["counters"]:
    value = counter.committed if counter.committed is not None else counter.attempted
    totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
  return totals


def rejected_by_reason(totals: dict[str, int]) -> dict[str, int]:
  """{reason: count} from `counter_totals`."""
  prefix = rejects.REJECTED_COUNTER_PREFIX
  return {name[len(prefix):]: n for name, n in sorted(totals.items()) if name.startswith(prefix) and n}


def quality_by_split(totals: dict[str, int]) -> dict[str, dict]:
  """{split: {"rejected": {reason: n}, "flagged": {code: n}, "hand_cropped": n}} from `counter_totals`.

  Only the image stage's decisions: label-stage rejects have no split. A
  flagged image counts once under each of its codes.
  """
  out: dict[str, dict] = {}
  for name, n in sorted(totals.items()):
    if not name.startswith(_SPLIT_COUNTER_PREFIX) or not n:
      continue
    split, rest = name[len(_SPLIT_COUNTER_PREFIX):].split("_", 1)
    entry = out.setdefault(split, {REJECTED: {}, FLAGGED: {}, HAND_CROPPED: 0})
    if rest == HAND_CROPPED:
      entry[HAND_CROPPED] += n
    else:
      kind, code = rest.split("_", 1)
      entry[kind][code] = entry[kind].get(code, 0) + n
  return out
