"""Each manual_dir layout builds, with the right splits, labels and age-group edges."""

import json
import pathlib

import apache_beam as beam
import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_rsna  # pylint: disable=unused-import  # registers rsna_bone_age
from bone_age import age_groups
from bone_age import dicom_writer
from tfds_rsna.rsna_bone_age import layouts

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DUMMY_DATA = REPO_ROOT / "tfds_rsna" / "rsna_bone_age" / "dummy_data"


def _hand(seed, height=70, width=50):
  rng = np.random.default_rng(seed)
  image = np.full((height, width), 10, np.uint8)
  image[8:height - 8, 12:width - 12] = rng.integers(120, 250)
  return image


def _png(seed):
  return cv2.imencode(".png", _hand(seed))[1].tobytes()


def _build(manual_dir, data_dir):
  builder = tfds.builder("rsna_bone_age/128px", data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), compute_stats=tfds.download.ComputeStatsMode.SKIP,
      beam_options=beam.options.pipeline_options.PipelineOptions(
          ["--runner=DirectRunner", "--direct_running_mode=in_memory"])))
  examples = {}
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      examples[ex["id"].decode()] = (split, ex)
  return builder, examples


def _official_dir(root: pathlib.Path):
  """The official RSNA layout: three tables in their exact published column layouts, any folder names."""
  train = {"1377": (180, "False"), "1378": (12, "False"), "1379": (94, "False"), "1380": (120, "True"),
           "1381": (82, "False"), "1382": (138, "True"), "1383": (150, "True"), "1384": (156, "True")}
  validation = {"1386": (30, "FALSE"), "1392": (162, "TRUE"), "1397": (18, "FALSE")}
  test = {"4360": ("M", "168.93"), "4361": ("F", "169.65")}
  root.mkdir(parents=True)
  (root / "train.csv").write_text("id,boneage,male\n" + "".join(f"{i},{a},{m}\n" for i, (a, m) in train.items()))
  (root / "Validation.csv").write_text(
      "Image ID,male,Bone Age (months)\n" + "".join(f"{i},{m},{a}\n" for i, (a, m) in validation.items()))
  (root / "test.csv").write_text(
      "Case ID,Sex,Ground truth bone age (months)\n" + "".join(f"{i},{s},{a}\n" for i, (s, a) in test.items()))
  folders = {"boneage-training-dataset": train, "Bone Age Validation Set/boneage-validation-dataset-1": validation,
             "Bone Age Test Set/Test Set Images": test}
  for folder, ids in folders.items():
    (root / folder).mkdir(parents=True)
    for n, example_id in enumerate(ids):
      (root / folder / f"{example_id}.png").write_bytes(_png(int(example_id) + n))
  return train, validation, test


def _generic_dicom_dir(root: pathlib.Path):
  """labels.csv + images/ mixing PNG, JPEG, DICOM with .dcm and DICOM without extension."""
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()  # as boneage-phantoms writes: same stems, not images to build
  ages = [10, 30, 50, 70, 90, 110, 130, 150, 170, 190, 210, 24]
  rows = []
  for n, age in enumerate(ages):
    example_id = f"p{n:02d}"
    image = _hand(n, height=90 + n, width=60)
    kind = n % 4
    if kind == 0:
      (root / "images" / f"{example_id}.dcm").write_bytes(dicom_writer.encode_dicom(image, sex="M" if n % 2 else "F"))
    elif kind == 1:  # PACS-style: no extension, 16-bit MONOCHROME1
      (root / "images" / example_id).write_bytes(
          dicom_writer.encode_dicom((255 - image).astype(np.uint16) * 257, photometric="MONOCHROME1", bits_stored=16))
    elif kind == 2:
      (root / "images" / f"{example_id}.jpg").write_bytes(cv2.imencode(".jpg", image)[1].tobytes())
    else:
      (root / "images" / f"{example_id}.png").write_bytes(cv2.imencode(".png", image)[1].tobytes())
    (root / "masks" / f"{example_id}.png").write_bytes(cv2.imencode(".png", image)[1].tobytes())
    rows.append(f"{example_id},{age},{n % 2 == 1}")
  (root / "labels.csv").write_text("id,boneage,male\n" + "\n".join(rows) + "\n")
  return {f"p{n:02d}": (age, 90 + n) for n, age in enumerate(ages)}


def _check_edges(builder, examples):
  """Metadata edges = quantiles of the built TRAIN labels; every age_group follows them, also when reloaded."""
  edges = builder.info.metadata["age_group_edges_months"]
  train_ages = [ex["boneage"] for split, ex in examples.values() if split == "train"]
  assert edges == pytest.approx(age_groups.quantile_edges(train_ages, 3), abs=1e-4)
  for _, ex in examples.values():
    assert ex["age_group"] == age_groups.assign(float(ex["boneage"]), edges)
  reloaded = tfds.builder_from_directory(str(builder.data_dir))  # readers without tfds_rsna
  assert reloaded.info.metadata["age_group_edges_months"] == edges


def test_kaggle_layout_never_builds_the_unlabeled_test_set(tmp_path):
  builder, examples = _build(DUMMY_DATA, tmp_path)
  assert builder.info.metadata["layout"] == "kaggle"
  assert len(examples) == 12 and not {"99001", "99002"} & set(examples)
  assert builder.info.metadata["kaggle_unlabeled_test_rows_not_built"] == 2
  assert builder.info.metadata["image_files_without_label"] == 2
  assert builder.info.metadata["synthetic"] is False  # no boneage-phantoms marker in the folder
  _check_edges(builder, examples)


def test_official_layout_keeps_official_splits_and_exact_labels(tmp_path):
  train, validation, test = _official_dir(tmp_path / "manual")
  builder, examples = _build(tmp_path / "manual", tmp_path / "out")
  assert builder.info.metadata["layout"] == "official"
  assert {i for i, (s, _) in examples.items() if s == "train"} == set(train)
  assert {i for i, (s, _) in examples.items() if s == "validation"} == set(validation)
  assert {i for i, (s, _) in examples.items() if s == "test"} == set(test)
  assert examples["4360"][1]["boneage"] == np.float32(168.93) and examples["4360"][1]["male"] == 1
  assert examples["4361"][1]["male"] == 0
  assert examples["1392"][1]["male"] == 1 and examples["1386"][1]["boneage"] == 30.0
  # Edges come from the TRAINING labels only.
  train_ages = [a for a, _ in train.values()]
  assert builder.info.metadata["age_group_edges_months"] == pytest.approx(age_groups.quantile_edges(train_ages, 3))
  _check_edges(builder, examples)


def test_generic_layout_reads_dicom_with_and_without_extension_and_jpeg(tmp_path):
  expected = _generic_dicom_dir(tmp_path / "manual")
  builder, examples = _build(tmp_path / "manual", tmp_path / "out")
  assert builder.info.metadata["layout"] == "generic"
  assert set(examples) == set(expected) and builder.info.metadata["rejected"] == {}
  for example_id, (_, ex) in examples.items():
    age, height = expected[example_id]
    assert ex["boneage"] == age and ex["original_height_px"] == height and ex["original_width_px"] == 60
    assert ex["image"].shape == (128, 128, 1) and ex["image"].max() > 100
  # Generated split: 15% / 15% of 12.
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
      "train": 8, "validation": 2, "test": 2}
  _check_edges(builder, examples)
  by_split = builder.info.metadata["quality_by_split"]
  assert sorted(by_split) == ["test", "train", "validation"]
  for split, counts in by_split.items():
    assert counts["rejected"] == {}
    # These blocks are no hand: the default gate (flag) lets each through with its flag, counted in its split.
    assert counts["flagged"]["not_hand_like"] == builder.info.splits[split].num_examples


def test_layout_detection_errors_are_clear(tmp_path):
  with pytest.raises(ValueError, match="matches no supported layout"):
    layouts.detect_layout(tmp_path)
  (tmp_path / "labels.csv").write_text("id,boneage,male\n")
  (tmp_path / "boneage-training-dataset.csv").write_text("id,boneage,male\n")
  with pytest.raises(ValueError, match="matches several layouts"):
    layouts.detect_layout(tmp_path)
  official = tmp_path / "official"
  official.mkdir()
  (official / "train.csv").write_text("id,boneage,male\n")
  (official / "Validation.csv").write_text("Image ID,male,Bone Age (months)\n")
  with pytest.raises(ValueError, match=r"lacks \['test.csv'\]"):
    layouts.detect_layout(official)
  with pytest.raises(ValueError, match="does not exist"):
    layouts.detect_layout(tmp_path / "nowhere")


def test_an_id_with_two_image_files_is_rejected_not_guessed(tmp_path):
  manual = tmp_path / "manual"
  (manual / "images" / "sub").mkdir(parents=True)
  for i in range(12):
    (manual / "images" / f"{i}.png").write_bytes(_png(i))
  (manual / "images" / "sub" / "7.dcm").write_bytes(b"y")  # a second file for id 7, one folder down
  (manual / "images" / ".8.png").write_bytes(_png(8))  # hidden: not an image of id .8
  (manual / "images" / "99.png").write_bytes(_png(99))  # no label row
  (manual / "labels.csv").write_text("id,boneage,male\n" + "".join(f"{i},{20 + 15 * i},{i % 2 == 0}\n"
                                                                    for i in range(12)))
  builder, examples = _build(manual, tmp_path / "out")
  assert set(examples) == {str(i) for i in range(12)} - {"7"}
  assert builder.info.metadata["rejected"] == {"duplicate_id": 1}
  (record,) = [json.loads(l) for l in (pathlib.Path(builder.data_dir) / "rejects.jsonl").read_text().splitlines()]
  assert record["id"] == "7" and "7.dcm" in record["detail"] and "7.png" in record["detail"]
  assert builder.info.metadata["rows_read"] == 12 and builder.info.metadata["image_files_without_label"] == 1


def test_image_files_without_label_counts_files_no_row_names(tmp_path):
  """Images of rejected rows have a label (and a reject); orphans count once per file."""
  manual = tmp_path / "manual"
  (manual / "images" / "sub").mkdir(parents=True)
  for i in range(16):
    (manual / "images" / f"{i}.png").write_bytes(_png(i))
  for orphan in ("99.png", "98.png", "sub/98.jpg"):
    (manual / "images" / orphan).write_bytes(_png(90))
  good = [f"{i},{20 + 15 * i},{i % 2 == 0}" for i in range(10)]
  bad = ["10,-1,True", "11,nan,True", "12,1_2,False", "13,50,?", "14,50,", "15,abc,True"]
  (manual / "labels.csv").write_text("id,boneage,male\n" + "\n".join(good + bad) + "\n")
  builder, examples = _build(manual, tmp_path / "out")
  assert len(examples) == 10
  assert sum(builder.info.metadata["rejected"].values()) == 6
  assert builder.info.metadata["image_files_without_label"] == 3


def test_rejected_counts_fall_back_to_the_rejects_file_without_beam_metrics(tmp_path):
  from unittest import mock  # pylint: disable=g-import-not-at-top
  from tfds_rsna.rsna_bone_age import rsna_bone_age_dataset_builder as builder_module  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "manual"
  (manual / "images").mkdir(parents=True)
  rows = [f"{i},{20 + 15 * i},{i % 2 == 0}" for i in range(10)]
  for i in range(10):
    (manual / "images" / f"{i}.png").write_bytes(_png(i))
  (manual / "labels.csv").write_text("id,boneage,male\n" + "\n".join(rows + ["77,-1,True", "78,50,?"]) + "\n")
  with mock.patch.object(builder_module.examples_lib, "counter_totals", side_effect=RuntimeError("no metrics")):
    builder, examples = _build(manual, tmp_path / "out")
  assert len(examples) == 10
  assert builder.info.metadata["rejected"] == {"invalid_label": 1, "unknown_sex": 1}
  assert builder.info.metadata["quality_by_split"] is None  # only the counters hold the gate's decisions
