"""The dataset builder's image stage never writes a degenerate or non-hand image into a split."""

import numpy as np
import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing import util

from bone_age import quality
from bone_age import quality_corpus as qc
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
