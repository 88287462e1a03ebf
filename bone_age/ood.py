"""Model-side out-of-distribution score: how far an image's embedding lies from training.

The embedding is the global average of the backbone's last feature map
(`model.backbone_feature_tensor`), the representation the heads read. At
export the trainer fits the training split's embeddings with a mean and a
Ledoit-Wolf shrunk covariance (the raw covariance of a few thousand
embeddings of a thousand or more channels is singular), and calibrates a
threshold: a percentile (99th by default) of the validation split's scores.
The scorer then reports each image's `ood_score`, the Mahalanobis distance
of its embedding, and flags images above the threshold.

What it can catch: inputs whose features differ from every training image
(other anatomy, other modalities, heavy artefacts, unusual exposure or
processing) even when they pass the classical gate. What it cannot: an image
the backbone maps near training images (a plausible hand with a wrong label,
a right hand that looks like a left one, subtle pathology), and anything
the training set itself contained. By construction about 1 in 100 ordinary
validation-like images is flagged at the 99th-percentile threshold.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bone_age import export_files

OOD_STATS_FILE = "ood_stats.npz"
DEFAULT_PERCENTILE = 99.0


@dataclasses.dataclass(frozen=True)
class OodStats:
  """Training-set embedding statistics and the calibrated threshold.

  Attributes:
    mean: (C,) float64 mean embedding of the training split.
    precision: (C, C) float64 inverse of the shrunk covariance.
    threshold: Scores above this are flagged (validation percentile).
    percentile: The validation percentile the threshold is.
    shrinkage: Ledoit-Wolf shrinkage towards a scaled identity, in [0, 1].
    num_train: Embeddings fitted.
    num_validation: Embeddings the threshold was calibrated on.
  """
  mean: np.ndarray
  precision: np.ndarray
  threshold: float
  percentile: float
  shrinkage: float
  num_train: int
  num_validation: int


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
  """Mean, shrunk covariance and shrinkage of rows x (N, C) (Ledoit & Wolf 2004).

  The covariance is (1 - s) S + s mu I with S the sample covariance
  (divided by N), mu its mean eigenvalue and s the estimated optimal
  shrinkage, which keeps it invertible even with fewer rows than columns.
  """
  x = np.asarray(x, dtype=np.float64)
  n, c = x.shape
  if n < 2:
    raise ValueError(f"need at least 2 embeddings to fit a covariance, got {n}")
  mean = x.mean(axis=0)
  xc = x - mean
  sample = xc.T @ xc / n
  mu = np.trace(sample) / c
  target_distance = np.sum((sample - mu * np.eye(c)) ** 2)  # d^2
  # b^2: average squared distance of each row's outer product from S.
  row_sq = np.sum(xc ** 2, axis=1)
  b2 = (np.sum(row_sq ** 2) - n * np.sum(sample ** 2)) / n ** 2
  b2 = min(max(b2, 0.0), target_distance)
  shrinkage = 1.0 if target_distance == 0 else b2 / target_distance
  covariance = (1.0 - shrinkage) * sample + shrinkage * mu * np.eye(c)
  return mean, covariance, float(shrinkage)


def scores(stats: OodStats, embeddings: np.ndarray) -> np.ndarray:
  """(N,) Mahalanobis distances of embeddings (N, C) from the training mean."""
  d = np.asarray(embeddings, dtype=np.float64).reshape(-1, stats.mean.shape[0]) - stats.mean
  return np.sqrt(np.maximum(np.einsum("nc,cd,nd->n", d, stats.precision, d), 0.0))


def fit(train_embeddings: np.ndarray, validation_embeddings: np.ndarray,
        percentile: float = DEFAULT_PERCENTILE) -> OodStats:
  """Fits the training statistics and calibrates the threshold on validation."""
  mean, covariance, shrinkage = ledoit_wolf(train_embeddings)
  if np.trace(covariance) == 0:
    raise ValueError("the training embeddings are all identical: no distribution to compare against")
  precision = np.linalg.inv(covariance)
  partial = OodStats(mean, precision, float("inf"), float(percentile), shrinkage, len(train_embeddings),
                     len(validation_embeddings))
  validation = scores(partial, validation_embeddings)
  if validation.size == 0:
    raise ValueError("no validation embeddings to calibrate the threshold on")
  return dataclasses.replace(partial, threshold=float(np.percentile(validation, percentile)))


def save(stats: OodStats, export_dir: str) -> str:
  """Writes ood_stats.npz beside export_metadata.json; returns its path."""
  return export_files.write_npz(export_dir, OOD_STATS_FILE, mean=stats.mean, precision=stats.precision,
                                threshold=stats.threshold, percentile=stats.percentile,
                                shrinkage=stats.shrinkage, num_train=stats.num_train,
                                num_validation=stats.num_validation)


def load(export_dir: str) -> OodStats | None:
  """The export's OodStats, or None for an export made without them."""
  data = export_files.read_npz(export_dir, OOD_STATS_FILE)
  if data is None:
    return None
  return OodStats(mean=data["mean"], precision=data["precision"], threshold=float(data["threshold"]),
                  percentile=float(data["percentile"]), shrinkage=float(data["shrinkage"]),
                  num_train=int(data["num_train"]), num_validation=int(data["num_validation"]))


def embedding_model(model):
  """keras.Model(inputs -> {"embedding": (B, C) pooled backbone features, **model outputs}).

  One forward pass gives the predictions and the embedding the OOD score reads.
  """
  import keras  # pylint: disable=g-import-not-at-top
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

  features = ba_model.backbone_feature_tensor(model)
  pooled = keras.layers.GlobalAveragePooling2D(name="ood_embedding", dtype="float32")(features)
  return keras.Model(model.inputs, {"embedding": pooled, **model.output}, name="bone_age_with_embedding")
