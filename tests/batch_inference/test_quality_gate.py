"""The scorer's quality gate end to end: rejects with reasons, flags in the rows, counts in the summary."""

import shutil

import numpy as np
import pytest
from apache_beam.testing import test_pipeline

from bone_age import letterbox
from bone_age import ood
from bone_age import quality
from bone_age import quality_corpus as qc
from batch_inference import score

IMAGE_SIZE_PX = 64


@pytest.fixture(scope="module")
def export_with_ood(tiny_export, tmp_path_factory):
  """The tiny export plus OOD statistics fitted on phantom embeddings."""
  from bone_age import export  # pylint: disable=g-import-not-at-top
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top
  export_dir = tmp_path_factory.mktemp("export_ood") / "export"
  shutil.copytree(tiny_export, export_dir)
  model, _ = export.load_export(str(export_dir))
  squares = np.stack([letterbox.letterbox(qc.phantom(20_000 + i), IMAGE_SIZE_PX)[0] for i in range(48)])[..., None]
  embeddings = ood.embedding_model(model).predict_on_batch(
      {ba_model.IMAGE_INPUT: squares, ba_model.MALE_INPUT: np.ones((48, 1), np.float32)})["embedding"]
  ood.save(ood.fit(embeddings[:32], embeddings[32:]), str(export_dir))
  return export_dir


def _inputs(root):
  root.mkdir()
  hand = qc.phantom(10_001)
  files = {
      "left.dcm": qc.dicom(hand),
      "right.dcm": qc.dicom(np.ascontiguousarray(hand[:, ::-1]), laterality="R"),
      "inverted.png": qc.png(255 - hand),
      "chest.dcm": qc.dicom(hand, body_part="CHEST"),
      "blank.png": qc.png(np.zeros((300, 240), np.uint8)),
      "dot.png": qc.png(np.zeros((1, 1), np.uint8)),
      "noise.png": qc.png(np.random.default_rng(0).integers(0, 256, (400, 300), dtype=np.uint8)),
  }
  for name, data in files.items():
    (root / name).write_bytes(data)
  return root


def _run(export_dir, inputs, output_dir, policy):
  return score.run([f"--model_dir={export_dir}", f"--inputs={inputs}/*", f"--output_dir={output_dir}",
                    "--unknown_sex=male", f"--quality_gate={policy}"], test_pipeline=test_pipeline.TestPipeline())


def test_flag_policy_scores_with_flags_and_counts_them(export_with_ood, outputs_of, tmp_path):
  inputs = _inputs(tmp_path / "in")
  _run(export_with_ood, inputs, tmp_path / "out", quality.FLAG)
  out = outputs_of(tmp_path / "out")
  rows = {r["id"]: r for r in out["predictions"]}
  rejects = {r["id"]: r["reason"] for r in out["rejects"]}
  assert rejects == {"blank": quality.BLANK_IMAGE, "dot": quality.IMAGE_TOO_SMALL}
  assert set(rows) == {"left", "right", "inverted", "chest", "noise"}
  assert quality.MIRRORED_RIGHT_HAND in rows["right"]["quality_flags"]
  # The right hand, mirrored by its laterality tag, is scored as the same left hand.
  assert abs(rows["right"]["boneage_months"] - rows["left"]["boneage_months"]) < 1.0
  assert rows["inverted"]["quality_flags"] == [quality.INVERTED_POLARITY]
  assert quality.NON_HAND_DICOM_TAGS in rows["chest"]["quality_flags"]
  assert quality.NOT_HAND_LIKE in rows["noise"]["quality_flags"]
  assert all(len(r["quality_flag_reasons"]) == len(r["quality_flags"]) for r in rows.values())
  assert all(isinstance(r["ood_score"], float) for r in rows.values())
  summary = out["summary"]
  assert summary["read_equals_scored_plus_rejected"] and summary["read"] == 7
  assert summary["flagged_rows_by_code"][quality.MIRRORED_RIGHT_HAND] == 1
  assert summary["flagged_rows_by_code"][quality.NON_HAND_DICOM_TAGS] == 1


@pytest.mark.slow
def test_strict_policy_rejects_what_flag_lets_through(export_with_ood, outputs_of, tmp_path):
  inputs = _inputs(tmp_path / "in")
  _run(export_with_ood, inputs, tmp_path / "out", quality.STRICT)
  out = outputs_of(tmp_path / "out")
  rejects = {r["id"]: r["reason"] for r in out["rejects"]}
  assert rejects == {"blank": quality.BLANK_IMAGE, "dot": quality.IMAGE_TOO_SMALL,
                     "chest": quality.NOT_A_HAND_RADIOGRAPH, "noise": quality.NOT_A_HAND}
  assert {r["id"] for r in out["predictions"]} == {"left", "right", "inverted"}
  assert out["summary"]["read_equals_scored_plus_rejected"]
