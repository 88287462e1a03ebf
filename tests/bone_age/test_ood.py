"""bone_age.ood: the shrunk covariance, the score, the calibration and the export file."""

import numpy as np
import pytest

from bone_age import ood


def _embeddings(n, c=24, seed=0, shift=0.0):
  rng = np.random.default_rng(seed)
  mixing = np.random.default_rng(99).normal(size=(c, c))
  return rng.normal(size=(n, c)) @ mixing + shift


def test_ledoit_wolf_matches_scikit_learn():
  covariance = pytest.importorskip("sklearn.covariance")
  x = _embeddings(40, c=60)  # fewer rows than columns: the raw covariance is singular
  mean, cov, shrinkage = ood.ledoit_wolf(x)
  reference = covariance.LedoitWolf().fit(x)
  np.testing.assert_allclose(cov, reference.covariance_, rtol=1e-9, atol=1e-9)
  assert shrinkage == pytest.approx(reference.shrinkage_)
  np.testing.assert_allclose(mean, x.mean(axis=0))
  assert np.linalg.matrix_rank(cov) == 60


def test_threshold_is_the_validation_percentile_and_shifted_embeddings_score_above_it():
  stats = ood.fit(_embeddings(500, seed=1), _embeddings(300, seed=2))
  validation = ood.scores(stats, _embeddings(300, seed=2))
  assert stats.threshold == pytest.approx(np.percentile(validation, 99.0))
  assert np.mean(ood.scores(stats, _embeddings(300, seed=3)) > stats.threshold) < 0.05
  far = _embeddings(50, seed=4, shift=20.0)
  assert np.all(ood.scores(stats, far) > stats.threshold)


def test_identical_embeddings_cannot_be_fitted():
  with pytest.raises(ValueError, match="identical"):
    ood.fit(np.ones((10, 4)), np.ones((5, 4)))


def test_save_and_load_round_trip(tmp_path):
  stats = ood.fit(_embeddings(100, seed=1), _embeddings(50, seed=2))
  ood.save(stats, str(tmp_path))
  loaded = ood.load(str(tmp_path))
  np.testing.assert_array_equal(loaded.precision, stats.precision)
  assert (loaded.threshold, loaded.num_train, loaded.num_validation) == (stats.threshold, 100, 50)
  assert ood.load(str(tmp_path / "missing")) is None


def test_embedding_model_gives_pooled_features_and_the_same_predictions():
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top
  model = ba_model.build_model(image_size_px=64, age_group_edges_months=[113.0, 150.0], backbone="tiny",
                               weights=None)
  inputs = {ba_model.IMAGE_INPUT: np.random.default_rng(0).integers(0, 255, (3, 64, 64, 1), dtype=np.uint8),
            ba_model.MALE_INPUT: np.asarray([[0.0], [1.0], [1.0]], np.float32)}
  out = ood.embedding_model(model).predict_on_batch(inputs)
  plain = model.predict_on_batch(inputs)
  assert out["embedding"].shape == (3, ba_model.backbone_feature_tensor(model).shape[-1])
  np.testing.assert_allclose(out[ba_model.AGE_OUTPUT], plain[ba_model.AGE_OUTPUT], rtol=1e-5)
