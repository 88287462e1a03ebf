"""DecodeLetterboxFn and the rejects plumbing on a real (in-process) Beam pipeline."""

import json

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that

import corrupt_inputs
from bone_age import errors
from beam_pipelines import rejects
from beam_pipelines import transforms


def _png(height=60, width=40, value=200):
  image = np.zeros((height, width), np.uint8)
  image[10:50, 5:35] = value
  image[20:30, 10:20] = value // 2
  return cv2.imencode(".png", image)[1].tobytes()


def _check_prepared(prepared):
  assert [p.id for p in prepared] == ["good"]
  p = prepared[0]
  assert p.image.shape == (32, 32) and p.image.dtype == np.uint8
  assert p.decoded_hw == (60, 40)
  # The letterbox maps onto what it received: the hand crop when there is one.
  source_hw = (60, 40) if p.crop_box is None else (p.crop_box.height_px, p.crop_box.width_px)
  assert (p.transform.source_height_px, p.transform.source_width_px) == source_hw
  assert p.patient is None and p.original is None


def _check_rejects(records):
  assert sorted((r["id"], r["reason"]) for r in records) == [
      ("bomb", errors.DECOMPRESSION_BOMB), ("empty", errors.EMPTY_FILE), ("text", errors.NOT_AN_IMAGE),
      ("truncated", errors.TRUNCATED)]
  assert all(set(r) == {"id", "source", "reason", "detail"} and r["detail"] for r in records)


def test_decode_letterbox_keeps_good_and_rejects_every_bad_input():
  good = _png()
  inputs = [("good", "a/good.png", good), ("empty", "a/empty.png", b""),
            ("truncated", "a/truncated.png", good[: len(good) // 2]),
            ("text", "a/text.png", b"this is not an image"), ("bomb", "a/bomb.png", corrupt_inputs.png_bomb(30000, 30000))]
  pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
  outputs = (pipeline | beam.Create(inputs)
             | beam.ParDo(transforms.DecodeLetterboxFn(32)).with_outputs(rejects.REJECTS_TAG, main="images"))
  assert_that(outputs.images | "ListImages" >> beam.combiners.ToList(), _all_of(_check_prepared), label="Images")
  assert_that(outputs[rejects.REJECTS_TAG] | "ListRejects" >> beam.combiners.ToList(), _all_of(_check_rejects),
              label="Rejects")
  result = pipeline.run()
  result.wait_until_finish()
  counters = {c.key.metric.name: c.committed
              for c in result.metrics().query(MetricsFilter().with_namespace("boneage"))["counters"]}
  assert counters["decoded"] == 1
  assert counters["rejected_truncated"] == counters["rejected_decompression_bomb"] == 1


def _all_of(check):
  def matcher(actual):
    (items,) = actual
    check(items)
  return matcher


def test_read_bytes_missing_file_is_a_reject(tmp_path):
  (tmp_path / "ok.png").write_bytes(b"abc")
  fn = transforms.ReadBytesFn()
  assert list(fn.process(("ok", str(tmp_path / "ok.png")))) == [("ok", str(tmp_path / "ok.png"), b"abc")]
  for path in (None, str(tmp_path / "gone.png")):
    (out,) = list(fn.process(("x", path)))
    assert out.tag == rejects.REJECTS_TAG and out.value["reason"] == errors.MISSING_FILE


def test_write_json_lines_sorted_replacing_and_empty(tmp_path):
  path = tmp_path / "sub" / "rejects.jsonl"
  records = [{"id": str(i), "source": f"s{i}", "reason": "r", "detail": "d"} for i in (3, 1, 2)]
  for content in (records, []):
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
      _ = p | beam.Create(content) | rejects.WriteJsonLines(str(path))
    lines = path.read_text().splitlines()
    assert [json.loads(l)["id"] for l in lines] == sorted(r["id"] for r in content)


def test_emit_rejects_routes_launcher_errors():
  error = errors.InputError("labels.csv:3", errors.UNKNOWN_SEX, "sex 'X'")
  (out,) = list(rejects.EmitRejectsFn().process((error, "7")))
  assert out.tag == rejects.REJECTS_TAG
  assert out.value == {"id": "7", "source": "labels.csv:3", "reason": "unknown_sex", "detail": "sex 'X'"}
