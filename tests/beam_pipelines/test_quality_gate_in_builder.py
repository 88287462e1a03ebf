"""The dataset builder's image stage never writes a degenerate or non-hand image into a split."""

import numpy as np
import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing import util

from bone_age import quality
from bone_age import quality_corpus as qc
from bone_age import schema
from beam_pipelines import examples
from beam_pipelines import rejects


def _records(root):
  root.mkdir()
  files = {
      "good": qc.png(qc.phantom(10_001)),
      "inverted": qc.png(255 - qc.phantom(10_002)),
      "black": qc.png(np.zeros((300, 240), np.uint8)),
      "white": qc.png(np.full((300, 240), 255, np.uint8)),
      "transparent": qc.png(np.zeros((200, 160, 4), np.uint8)),
      "dot": qc.png(np.zeros((1, 1), np.uint8)),
      "strip": qc.png(np.tile(np.arange(0, 250, 5, dtype=np.uint8), (40, 10))),
      "chest": qc.png(qc.chest_like(1)),
  }
  records = []
  for i, (name, data) in enumerate(files.items()):
    path = root / f"{name}.png"
    path.write_bytes(data)
    records.append(examples.ImageRecord(name, str(path), 100.0, True, 0, ("train", "validation", "test")[i % 3]))
  return records


def _ids(pairs):
  return sorted(example["id"] for _, (_, example) in pairs)


def _reasons(records):
  return sorted((r["id"], r["reason"]) for r in records)


def test_builder_rejects_degenerate_and_non_hand_images_in_every_split(tmp_path):
  records = _records(tmp_path / "images")
  with test_pipeline.TestPipeline() as p:
    out = (p | beam.Create(records)
           | beam.ParDo(examples.RecordToExampleFn(64, quality_gate=quality.STRICT)).with_outputs(
               rejects.REJECTS_TAG, main=examples.EXAMPLES_TAG))
    util.assert_that(out[examples.EXAMPLES_TAG] | "Ids" >> beam.combiners.ToList() | "SortIds" >> beam.Map(_ids),
                     util.equal_to([["good", "inverted"]]), label="Written")
    util.assert_that(out[rejects.REJECTS_TAG] | "All" >> beam.combiners.ToList() | "Reasons" >> beam.Map(_reasons),
                     util.equal_to([[("black", quality.BLANK_IMAGE), ("chest", quality.NOT_A_HAND),
                                     ("dot", quality.IMAGE_TOO_SMALL), ("strip", quality.ABSURD_ASPECT_RATIO),
                                     ("transparent", quality.BLANK_IMAGE), ("white", quality.BLANK_IMAGE)]]),
                     label="Rejected")


def test_flag_policy_still_keeps_degenerate_images_out(tmp_path):
  records = _records(tmp_path / "images")
  with test_pipeline.TestPipeline() as p:
    out = (p | beam.Create(records)
           | beam.ParDo(examples.RecordToExampleFn(64, quality_gate=quality.FLAG)).with_outputs(
               rejects.REJECTS_TAG, main=examples.EXAMPLES_TAG))
    util.assert_that(out[examples.EXAMPLES_TAG] | "Ids" >> beam.combiners.ToList() | "SortIds" >> beam.Map(_ids),
                     util.equal_to([["chest", "good", "inverted"]]))


def test_counts_of_flags_rejects_and_crops_per_split(tmp_path):
  """The builder's metadata counts come from these counters: each image decision under its split."""
  records = _records(tmp_path / "images")
  small = tmp_path / "images" / "small.png"
  small.write_bytes(qc.png(qc.on_large_canvas(qc.phantom(10_003), 0.3, 3)))
  records.append(examples.ImageRecord("small", str(small), 100.0, True, 0, "test"))
  p = test_pipeline.TestPipeline()
  _ = (p | beam.Create(records)
       | beam.ParDo(examples.RecordToExampleFn(64, quality_gate=quality.FLAG)).with_outputs(
           rejects.REJECTS_TAG, main=examples.EXAMPLES_TAG))
  result = p.run()
  result.wait_until_finish()
  by_split = examples.quality_by_split(examples.counter_totals(result))
  # train: good, white, strip; validation: inverted, transparent, chest; test: black, dot, small.
  assert by_split["train"]["rejected"] == {quality.BLANK_IMAGE: 1, quality.ABSURD_ASPECT_RATIO: 1}
  assert by_split["validation"]["rejected"] == {quality.BLANK_IMAGE: 1}
  assert by_split["test"]["rejected"] == {quality.BLANK_IMAGE: 1, quality.IMAGE_TOO_SMALL: 1}
  assert by_split["validation"]["flagged"][quality.INVERTED_POLARITY] == 1
  assert by_split["validation"]["flagged"][quality.NOT_HAND_LIKE] == 1  # the chest, let through under flag
  assert by_split["test"]["flagged"] == {quality.SMALL_HAND: 1}
  assert by_split["test"]["hand_cropped"] == 1
  assert quality.SMALL_HAND not in by_split["train"]["flagged"]


def test_original_size_is_the_decoded_size_before_the_hand_crop(tmp_path):
  path = tmp_path / "small.png"
  path.write_bytes(qc.png(qc.on_large_canvas(qc.phantom(10_003), 0.3, 3)))  # 1600x1300 canvas
  fn = examples.RecordToExampleFn(64, quality_gate=quality.FLAG)
  fn.setup()
  ((split, (example_id, example)),) = list(fn.process(examples.ImageRecord("small", str(path), 100.0, True, 0,
                                                                             "train")))
  assert (split, example_id) == ("train", "small")
  assert (example[schema.ORIGINAL_HEIGHT_PX], example[schema.ORIGINAL_WIDTH_PX]) == (1600, 1300)
