"""The RunInference handler: a model shared across processes scores (and explains) like a private one."""

import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference import base

from batch_inference import handler

SIZE_PX = 64


def _requests():
  rng = np.random.default_rng(3)
  return [(f"r{i}", handler.ScoreRequest(rng.integers(0, 255, (SIZE_PX, SIZE_PX), dtype=np.uint8), float(i % 2)))
          for i in range(5)]


def _to_json(keyed_result) -> str:
  key, result = keyed_result
  return json.dumps({"id": key, "months": result.inference.boneage_months,
                     "probs": result.inference.group_probabilities.tolist(),
                     "heat": float(result.inference.heatmap.sum())})


def _score(export_dir, out_dir, share_model: bool) -> dict:
  """{id: (months, probabilities, heatmap sum)} from a real RunInference on DirectRunner."""
  options = beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=in_memory"])
  with beam.Pipeline(options=options) as p:
    _ = (p
         | beam.Create(_requests())
         | base.RunInference(base.KeyedModelHandler(handler.BoneAgeModelHandler(
             str(export_dir), batch_size=4, gradcam=True, share_model=share_model)))
         | beam.Map(_to_json)
         | beam.io.WriteToText(str(out_dir / "scores"), num_shards=1))
  rows = [json.loads(l) for l in (out_dir / "scores-00000-of-00001").read_text().splitlines()]
  return {r["id"]: (r["months"], r["probs"], r["heat"]) for r in rows}


def test_shared_model_gives_the_same_scores_and_gradcam_as_a_private_one(tiny_export, tmp_path):
  (tmp_path / "private").mkdir()
  (tmp_path / "shared").mkdir()
  private = _score(tiny_export, tmp_path / "private", share_model=False)
  # Shared: every call goes through Beam's cross-process proxy, as from a worker's other SDK processes.
  shared = _score(tiny_export, tmp_path / "shared", share_model=True)
  assert set(private) == set(shared) == {f"r{i}" for i in range(5)}
  for key, (months, probs, heat) in private.items():
    s_months, s_probs, s_heat = shared[key]
    assert s_months == pytest.approx(months, abs=1e-4)
    np.testing.assert_allclose(s_probs, probs, atol=1e-5)
    assert s_heat == pytest.approx(heat, rel=1e-4) and heat > 0


def test_sharing_is_decided_by_the_gpus_the_worker_has(tmp_path):
  auto = handler.BoneAgeModelHandler(str(tmp_path))
  assert auto.share_model_across_processes() == (handler.visible_gpu_count() > 0)
  assert handler.BoneAgeModelHandler(str(tmp_path), share_model=True).share_model_across_processes()
  assert not handler.BoneAgeModelHandler(str(tmp_path), share_model=False).share_model_across_processes()
  assert auto.model_copies() == 1
