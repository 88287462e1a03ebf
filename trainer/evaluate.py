"""Evaluation of an exported model on one split of the prepared TFDS dataset.

`boneage-evaluate` (trainer.evaluate_main) calls `evaluate()`. It reads the
dataset with `tfds.builder_from_directory` (never the builder's code), picks
the resolution config matching the export's image size, streams the split
through the model batch by batch (the split is never held in memory as
images) and writes:
  metrics.json      overall / per sex / per age band: MAE with its bootstrap
                    95% interval, RMSE, R2, the share within 6 and 12
                    months, group accuracy, QWK, each with its count; the
                    predict-the-training-mean baseline; the confusion matrix
  predictions.csv   one row per image (id, sex M/F as the scorer writes it,
                    true and predicted months and group, the probability of
                    each named group)
  *.png             scatter, Bland-Altman, confusion matrix, error by age,
                    each titled with the model, the dataset and the split
With a masks directory (phantoms' `masks/<id>.png`), metrics.json also has
`gradcam_mask_share`: Grad-CAM mass inside the age-signal mask against the
mask's share of the image (trainer.gradcam_mask).
"""

import csv
import datetime
import json
import os

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from bone_age import age_groups
from bone_age import conformal
from bone_age import errors
from bone_age import export as ba_export
from bone_age import metrics
from bone_age import model as ba_model
from bone_age import provenance
from bone_age import schema
from bone_age import tta
from trainer import gradcam_mask
from trainer import input_pipeline
from trainer import plots

DATASET_NAME = "rsna_bone_age"
EDGES_KEY = "age_group_edges_months"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
TRAIN_SPLIT = "train"
DEFAULT_BATCH_SIZE = 32


def find_dataset_dir(data_dir: str, image_size_px: int, dataset_version: str | None = None) -> str:
  """<data_dir>/rsna_bone_age/<S>px/<version> for the model's image size.

  The version the model was trained on when present, else the newest one
  (logged). `data_dir` may also be a version directory itself.

  Raises:
    InputError: naming the directory looked at and the configs that exist.
  """
  if tf.io.gfile.exists(os.path.join(data_dir, "dataset_info.json")):
    return data_dir
  config_dir = os.path.join(data_dir, DATASET_NAME, f"{image_size_px}px")
  if not tf.io.gfile.isdir(config_dir):
    parent = os.path.join(data_dir, DATASET_NAME)
    present = sorted(c.rstrip("/") for c in tf.io.gfile.listdir(parent)) if tf.io.gfile.isdir(parent) else []
    raise errors.InputError(config_dir, errors.MISSING_FILE,
                            f"no {image_size_px}px dataset for this {image_size_px}px model "
                            f"(configs present: {present or 'none'})")
  versions = input_pipeline.prepared_versions(config_dir)
  if not versions:
    raise errors.InputError(config_dir, errors.MISSING_FILE, "no prepared dataset version (dataset_info.json)")
  if dataset_version in versions:
    return os.path.join(config_dir, dataset_version)
  if dataset_version:
    logging.warning("model was trained on dataset version %s, which is not in %s; evaluating on %s",
                    dataset_version, config_dir, versions[-1])
  return os.path.join(config_dir, versions[-1])


def training_mean_months(builder) -> float | None:
  """Mean training label: the trivial predictor any model must beat (None without a train split)."""
  if TRAIN_SPLIT not in builder.info.splits:
    return None
  ds = builder.as_dataset(split=TRAIN_SPLIT, decoders={schema.IMAGE: tfds.decode.SkipDecoding()})
  ages = ds.map(lambda ex: ex[schema.BONEAGE_MONTHS], num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
  values = np.concatenate([b for b in ages.as_numpy_iterator()] or [np.zeros((0,), np.float32)])
  values = values[np.isfinite(values)]
  return float(values.mean()) if values.size else None


def predict_split(model, builder, split: str, batch_size: int = DEFAULT_BATCH_SIZE, tta_views: int = 1) -> dict:
  """Streams a split through the model; returns per-image numpy arrays.

  With tta_views > 1 each batch is also scored under the first tta_views
  views of bone_age.tta: `pred_months` is the views' mean, `pred_sd_months`
  their spread and `view_months` (V, N) every view's months. The group
  probabilities are the plain (un-augmented) view's.
  """
  tta.check_views(tta_views)
  if split not in builder.info.splits:
    raise errors.InputError(str(builder.data_dir), errors.MISSING_FILE,
                            f"dataset has no split {split!r} (has {sorted(builder.info.splits.keys())})")
  ds = builder.as_dataset(split=split, shuffle_files=False).batch(batch_size).prefetch(2)
  columns = {"id": [], "male": [], "true_months": [], "view_months": [], "group_probs": []}
  for batch in ds.as_numpy_iterator():
    male = batch[schema.MALE].astype(np.float32)
    view_months, probs = [], None
    for view_images in tta.views(batch[schema.IMAGE], tta_views):
      out = model.predict_on_batch({ba_model.IMAGE_INPUT: view_images, ba_model.MALE_INPUT: male[:, None]})
      view_months.append(np.asarray(out[ba_model.AGE_OUTPUT], np.float64).reshape(-1))
      probs = np.asarray(out[ba_model.GROUP_OUTPUT], np.float64) if probs is None else probs
    columns["id"].extend(i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in batch[schema.ID])
    columns["male"].append(batch[schema.MALE].astype(np.int64))
    columns["true_months"].append(batch[schema.BONEAGE_MONTHS].astype(np.float64))
    columns["view_months"].append(np.stack(view_months))
    columns["group_probs"].append(probs)
  num_groups = len(ba_model.age_group_edges(model)) + 1
  empty = {"male": np.zeros((0,), np.int64), "group_probs": np.zeros((0, num_groups)),
           "view_months": np.zeros((tta_views, 0))}
  out = {k: (np.asarray(v) if k == "id" else (np.concatenate(v, axis=-1 if k == "view_months" else 0) if v
                                              else empty.get(k, np.zeros((0,)))))
         for k, v in columns.items()}
  out["pred_months"], out["pred_sd_months"] = tta.summarise(out["view_months"])
  return out


def interval_report(predictions: dict, calibration, tta_views: int, alpha: float) -> dict:
  """Adds interval bounds to `predictions` and returns the split's coverage and mean width.

  Raises:
    ValueError: when the calibration cannot give this alpha or view count.
  """
  half_width = conformal.half_width_months(calibration, tta_views, alpha)
  low, high = conformal.bounds(predictions["pred_months"], half_width)
  predictions["interval_low_months"], predictions["interval_high_months"] = low, high
  labeled = np.isfinite(predictions["true_months"])
  return {
      "method": conformal.METHOD, "level": round(1.0 - alpha, 6), "alpha": alpha, "tta_views": tta_views,
      "half_width_months": half_width, "n_calibration": calibration.num_calibration,
      "rank": conformal.finite_sample_rank(calibration.num_calibration, alpha),
      "count": int(labeled.sum()),
      "coverage": conformal.coverage(predictions["true_months"][labeled], low[labeled], high[labeled]),
      "mean_width_months": float(np.mean(high[labeled] - low[labeled])) if labeled.any() else None,
      "mean_tta_sd_months": float(np.mean(predictions["pred_sd_months"])) if tta_views > 1 and labeled.any() else None,
  }


def _all(true, pred, true_group, pred_group, num_groups, mask):
  return metrics.all_metrics(true[mask], pred[mask], true_group[mask], pred_group[mask], num_groups)


def compute_report(predictions: dict, edges: list[float], train_mean_months: float | None) -> dict:
  """metrics.json content: overall, by sex, by age band, baseline, confusion matrix."""
  labeled = np.isfinite(predictions["true_months"])
  true = predictions["true_months"][labeled]
  pred = predictions["pred_months"][labeled]
  male = predictions["male"][labeled].astype(bool)
  num_groups = len(edges) + 1
  true_group = age_groups.assign(true, edges)
  pred_group = predictions["group_probs"][labeled].argmax(axis=1) if true.size else np.zeros((0,), np.int64)
  everyone = np.ones(true.shape, bool)
  names = age_groups.group_names(edges)
  report = {
      "num_examples": int(labeled.size),
      "num_unlabeled_excluded": int((~labeled).sum()),
      "overall": _all(true, pred, true_group, pred_group, num_groups, everyone),
      "bias_months": float(np.mean(pred - true)) if true.size else None,
      "by_sex": metrics.breakdown({"female": ~male, "male": male},
                                  lambda m: _all(true, pred, true_group, pred_group, num_groups, m)),
      "by_age_band": metrics.breakdown({names[g]: true_group == g for g in range(num_groups)},
                                       lambda m: _all(true, pred, true_group, pred_group, num_groups, m)),
      "age_group_edges_months": list(edges),
      "age_group_names": names,
      "confusion_matrix": metrics.confusion_matrix(true_group, pred_group, num_groups).tolist(),
      "baseline": {"training_mean_months": train_mean_months,
                   "mae_months": (float(np.mean(np.abs(true - train_mean_months)))
                                  if train_mean_months is not None and true.size else None)},
  }
  return report


def _write_predictions(path: str, predictions: dict, edges: list[float]) -> None:
  names = age_groups.group_names(edges)
  has_interval = "interval_low_months" in predictions
  with tf.io.gfile.GFile(path, "w") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "sex", "true_months", "pred_months", "pred_tta_sd_months", "interval_low_months",
                     "interval_high_months", "true_group", "pred_group"]
                    + [f"prob_{slug}" for slug in age_groups.group_slugs(edges)])
    for i, example_id in enumerate(predictions["id"]):
      true_months = predictions["true_months"][i]
      labeled = bool(np.isfinite(true_months))
      probs = predictions["group_probs"][i]
      interval = ([f"{predictions['interval_low_months'][i]:.2f}", f"{predictions['interval_high_months'][i]:.2f}"]
                  if has_interval else ["", ""])
      writer.writerow([example_id, "M" if predictions["male"][i] else "F", f"{true_months:.2f}" if labeled else "",
                       f"{predictions['pred_months'][i]:.2f}", f"{predictions['pred_sd_months'][i]:.2f}", *interval,
                       names[int(age_groups.assign(true_months, edges))] if labeled else "",
                       names[int(np.argmax(probs))]]
                      + [f"{p:.4f}" for p in probs])


def plot_title(export_metadata: dict, builder, split: str, count: int) -> str:
  """Which model, on which data: every plot says it, and says when the data are synthetic phantoms."""
  model = export_metadata.get("backbone", "model")
  if export_metadata.get("experiment"):
    model += f" ({export_metadata['experiment']}"
    step = export_metadata.get("checkpoint_step", export_metadata.get("train_steps"))
    model += f", step {step})" if step else ")"
  dataset = f"{builder.info.full_name}, {split} split, n={count}"
  if (builder.info.metadata or {}).get("synthetic"):
    dataset = "SYNTHETIC phantoms: " + dataset
  return f"{model}\n{dataset}"


def evaluate(data_dir: str, model_dir: str, split: str, output_dir: str,
             batch_size: int = DEFAULT_BATCH_SIZE, masks_dir: str | None = None,
             tta_views: int = tta.DEFAULT_VIEWS, interval_alpha: float = conformal.DEFAULT_ALPHA) -> dict:
  """Evaluates the export in model_dir on `split`; writes metrics, predictions and plots.

  With masks_dir (a folder of `<id>.png` age-signal masks, as boneage-phantoms
  writes them), the report also holds `gradcam_mask_share`. Predictions are
  the mean of `tta_views` TTA views; with the export's conformal calibration
  the report's `prediction_interval` has the (1 - interval_alpha) interval's
  coverage and mean width on this split (else the reason it has none).

  Returns:
    The metrics.json content.

  Raises:
    FileNotFoundError: if model_dir holds no export.
    InputError: if the dataset or split is missing.
  """
  export_dir = ba_export.resolve_export_dir(model_dir)
  model, export_metadata = ba_export.load_export(export_dir)
  edges = ba_model.age_group_edges(model)
  dataset_dir = find_dataset_dir(data_dir, ba_model.image_size_px(model), export_metadata.get("dataset_version"))
  builder = tfds.builder_from_directory(dataset_dir)
  dataset_edges = (builder.info.metadata or {}).get(EDGES_KEY)
  if dataset_edges is not None and [float(e) for e in dataset_edges] != edges:
    # True groups are recomputed from months with the MODEL's edges, so the
    # classification metrics stay meaningful; the mismatch is still reported.
    logging.warning("dataset age-group edges %s differ from the model's %s", dataset_edges, edges)
  logging.info("evaluating %s on %s split %r", export_dir, dataset_dir, split)
  predictions = predict_split(model, builder, split, batch_size, tta_views)
  report = compute_report(predictions, edges, training_mean_months(builder))
  calibration = conformal.load(export_dir)
  if calibration is None:
    report["prediction_interval"] = {"missing_reason": f"the export has no {conformal.CONFORMAL_SCORES_FILE}"}
  else:
    try:
      report["prediction_interval"] = interval_report(predictions, calibration, tta_views, interval_alpha)
    except ValueError as e:
      report["prediction_interval"] = {"missing_reason": str(e)}
  report.update({
      "split": split,
      "dataset_dir": dataset_dir,
      "dataset_version": str(builder.info.version),
      "dataset_age_group_edges_months": dataset_edges,
      "export_dir": export_dir,
      "export_dataset_version": export_metadata.get("dataset_version"),
      "backbone": export_metadata.get("backbone"),
      "tta_views": tta_views,
      "provenance": provenance.run_provenance(
          export_dir, export_metadata, datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")),
  })
  if masks_dir:
    report["gradcam_mask_share"] = gradcam_mask.mask_share_report(model, builder, split, masks_dir, batch_size)
  tf.io.gfile.makedirs(output_dir)
  labeled = np.isfinite(predictions["true_months"])
  report["plots"] = plots.write_all(
      output_dir,
      true_months=predictions["true_months"][labeled],
      pred_months=predictions["pred_months"][labeled],
      male=predictions["male"][labeled].astype(bool),
      confusion_matrix=np.asarray(report["confusion_matrix"]),
      group_names=report["age_group_names"],
      title=plot_title(export_metadata, builder, split, int(labeled.sum())))
  _write_predictions(os.path.join(output_dir, PREDICTIONS_FILE), predictions, edges)
  with tf.io.gfile.GFile(os.path.join(output_dir, METRICS_FILE), "w") as f:
    f.write(json.dumps(report, indent=2, allow_nan=False))
  return report
