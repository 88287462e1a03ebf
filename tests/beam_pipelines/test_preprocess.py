"""boneage-preprocess end to end: real RSNA sample, both DirectRunner modes, every bad input, `tfds build`."""

import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

import corrupt_inputs
from beam_pipelines import preprocess

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DUMMY_DATA = REPO_ROOT / "tfds_rsna" / "rsna_bone_age" / "dummy_data"
IN_PROCESS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
TWO_PROCESSES = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _build(manual_dir, data_dir, config, beam_args, rejects=None, show_progress=False):
  argv = ["boneage-preprocess", f"--manual_dir={manual_dir}", f"--data_dir={data_dir}", f"--config={config}"]
  if rejects:
    argv.append(f"--rejects={rejects}")
  return preprocess.run(argv + beam_args, show_progress=show_progress)


def _load_by_id(dataset_dir):
  """{id: (split, example)} of every split, read with builder_from_directory (no tfds_rsna import needed)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(str(dataset_dir))
  out = {}
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      out[ex["id"].decode()] = (split, ex)
  return builder, out


def _check_sample_examples(summary, rsna_sample_dir):
  assert summary.read == 65 and summary.total_written == 65 and summary.rejected == {}
  assert set(summary.written) == {"train", "validation", "test"}
  builder, examples = _load_by_id(summary.dataset_dir)
  with open(rsna_sample_dir / "labels.csv", newline="") as f:
    labels = {r["id"]: (np.float32(r["boneage"]), int(r["male"] == "True")) for r in csv.DictReader(f)}
  assert set(examples) == set(labels)
  for example_id, (_, ex) in examples.items():
    assert ex["image"].shape == (384, 384, 1) and ex["image"].dtype == np.uint8
    assert (ex["boneage"], ex["male"]) == labels[example_id]
    assert ex["image"].max() > 100  # a radiograph, not an empty square
  assert len(builder.info.metadata["age_group_edges_months"]) == 2
  return examples


@pytest.mark.slow
def test_rsna_sample_65_exact_examples_same_in_process_and_with_two_workers(rsna_sample_dir, tmp_path):
  # One test for both builds: the comparison needs both, and pytest-xdist
  # would otherwise build them again on each worker.
  in_process = _build(rsna_sample_dir, tmp_path / "in_process", "384px", IN_PROCESS)
  two_workers = _build(rsna_sample_dir, tmp_path / "two_workers", "384px", TWO_PROCESSES)
  a = _check_sample_examples(in_process, rsna_sample_dir)
  b = _check_sample_examples(two_workers, rsna_sample_dir)
  assert in_process.written == two_workers.written
  for example_id, (split, ex) in a.items():
    split_b, ex_b = b[example_id]
    assert split == split_b
    for key, value in ex.items():
      np.testing.assert_array_equal(value, ex_b[key], err_msg=f"{example_id} {key}")


def test_beam_options_are_the_unknown_flags():
  leftovers = preprocess.parse_argv(["prog", "--manual_dir=/m", "--data_dir=/d", "--runner=DirectRunner",
                                     "--direct_num_workers=2", "--project=p", "--config=128px"])
  assert leftovers == ["--runner=DirectRunner", "--direct_num_workers=2", "--project=p"]
  with pytest.raises(Exception, match="--data_dir is required"):
    preprocess.parse_argv(["prog", "--manual_dir=/m"])


def test_usage_errors_exit_2_with_a_message(capsys, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    preprocess.main(["boneage-preprocess", "--data_dir=/tmp/x"])
  assert exit_info.value.code == 2 and "--manual_dir is required" in capsys.readouterr().err
  (tmp_path / "notes.txt").write_text("no label table here")
  with pytest.raises(SystemExit) as exit_info:
    preprocess.main(["boneage-preprocess", f"--manual_dir={tmp_path}", f"--data_dir={tmp_path / 'out'}",
                     "--config=128px", "--runner=DirectRunner"])
  assert exit_info.value.code == 2 and "matches no supported layout" in capsys.readouterr().err


def _hand_png(seed):
  rng = np.random.default_rng(seed)
  image = np.zeros((80, 60), np.uint8)
  image[10:70, 15:45] = 120 + rng.integers(0, 100)
  return cv2.imencode(".png", image)[1].tobytes()


# id -> (label row, image bytes or None for "no file", expected reject reason or None)
def _bad_inputs_dir(root: pathlib.Path):
  (root / "images").mkdir(parents=True)
  good = _hand_png(0)
  rows, expected = [], {}
  for i in range(16):
    rows.append(f"{100 + i},{12 + 13 * i},{i % 2 == 0}")
    (root / "images" / f"{100 + i}.png").write_bytes(_hand_png(i))
  files = {"201": None, "202": b"", "203": good[: len(good) // 2], "204": b"GIF? no, plain text", "205": corrupt_inputs.png_bomb(30000, 30000)}
  reasons = {"201": "missing_file", "202": "empty_file", "203": "truncated", "204": "not_an_image",
             "205": "decompression_bomb"}
  for example_id, data in files.items():
    rows.append(f"{example_id},100,True")
    if data is not None:
      (root / "images" / f"{example_id}.png").write_bytes(data)
    expected[(example_id, reasons[example_id])] = 1
  for example_id in ("301", "302", "303", "304"):
    (root / "images" / f"{example_id}.png").write_bytes(good)
  rows += ["301,-5,True", "302,eleven,False", "303,100,Unknown", "304,90,True", "304,91,True"]
  expected.update({("301", "invalid_label"): 1, ("302", "invalid_label"): 1, ("303", "unknown_sex"): 1,
                   ("304", "duplicate_id"): 2})
  (root / "labels.csv").write_text("id,boneage,male\n" + "\n".join(rows) + "\n")
  return expected


def test_every_bad_input_is_rejected_with_its_reason_and_nothing_is_lost(tmp_path, capsys):
  expected = _bad_inputs_dir(tmp_path / "manual")
  rejects_file = tmp_path / "rejects.jsonl"
  summary = _build(tmp_path / "manual", tmp_path / "out", "128px", IN_PROCESS, rejects=rejects_file,
                   show_progress=True)
  # The progress line's total is the label rows; written + rejected reach it.
  last = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dataset build:")][-1]
  assert re.match(rf"dataset build: {summary.read}/{summary.read} images \(100%\) \(train {summary.written['train']}, "
                  rf"validation {summary.written.get('validation', 0)}, test {summary.written.get('test', 0)}, "
                  rf"rejected {sum(summary.rejected.values())}\) · [0-9.]+ images/s$", last), last
  records = [json.loads(line) for line in rejects_file.read_text().splitlines()]
  got = {}
  for r in records:
    assert r["source"] and r["detail"]
    got[(r["id"], r["reason"])] = got.get((r["id"], r["reason"]), 0) + 1
  assert got == expected
  assert summary.read == 16 + 5 + 5 and summary.total_written == 16
  assert summary.accounted_for
  assert summary.rejected == {"decompression_bomb": 1, "duplicate_id": 2, "empty_file": 1, "invalid_label": 2,
                              "missing_file": 1, "not_an_image": 1, "truncated": 1, "unknown_sex": 1}
  # The copy beside the dataset is the same file.
  assert (pathlib.Path(summary.dataset_dir) / "rejects.jsonl").read_text() == rejects_file.read_text()
  assert "-> OK" in summary.format()
  # Asked again, the existing dataset is reused: same summary, and --rejects still gets the file.
  again = _build(tmp_path / "manual", tmp_path / "out", "128px", IN_PROCESS, rejects=tmp_path / "again.jsonl")
  assert again == summary
  assert (tmp_path / "again.jsonl").read_text() == rejects_file.read_text()


def test_tfds_build_command_line(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  tfds_cli = pathlib.Path(sys.executable).parent / "tfds"
  completed = subprocess.run(
      [str(tfds_cli), "build", "rsna_bone_age", "--imports=tfds_rsna", "--config=128px",
       f"--manual_dir={DUMMY_DATA}", f"--data_dir={tmp_path}", "--download_config={\"compute_stats\": \"skip\"}",
       "--beam_pipeline_options=runner=DirectRunner"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  _, examples = _load_by_id(tmp_path / "rsna_bone_age" / "128px" / "1.0.0")
  assert len(examples) == 12
  # The registered builder (tfds_rsna imported) reads the same data back.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tfds_rsna  # pylint: disable=g-import-not-at-top,unused-import
  builder = tfds.builder("rsna_bone_age/128px", data_dir=tmp_path)
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
      "train": 8, "validation": 2, "test": 2}
  assert sum(1 for _ in builder.as_dataset(split="train+validation+test")) == 12
