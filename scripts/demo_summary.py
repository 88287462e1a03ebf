"""Prints where the demo put everything and the headline numbers.

Fails (exit 1) if any artefact the demo promises is missing, so `make demo`
cannot report success over a broken stage.
Usage: python scripts/demo_summary.py DEMO_OUTPUT_DIR
"""

import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bone_age import cli  # pylint: disable=wrong-import-position
from batch_inference import results  # pylint: disable=wrong-import-position


def _one(pattern: str) -> str:
  matches = sorted(glob.glob(pattern))
  return matches[-1] if matches else pattern


def _latest_scores(scores_dir: str) -> dict | None:
  try:
    return results.read_run(scores_dir)
  except (results.RunNotFoundError, results.RunNotPublishedError) as e:
    print(f"  scoring outputs: {e}")
    return None


def _three_patients(rows: list[dict]) -> list[dict]:
  """Three rows to show, those with a known chronological age (and so an SDS) first."""
  return sorted(rows, key=lambda r: (r.get("chronological_age_months") is None, r["id"]))[:3]


def patient_lines(row: dict, run_dir: str) -> list[str]:
  """One patient's result in words: BA (with interval), CA, BA - CA, SDS and reading, the SR's path."""
  ba = f"bone age {row['boneage']} ({row['boneage_months']:.1f} months)"
  if row.get("interval_low_months") is not None:
    ba += (f", {100 * row['interval_level']:g}% interval {row['interval_low_months']:.1f} to "
           f"{row['interval_high_months']:.1f} months")
  else:
    ba += f", no interval ({row.get('interval_missing_reason')})"
  if row.get("boneage_tta_sd_months") is not None:
    ba += f", TTA SD {row['boneage_tta_sd_months']:.1f} months"
  if row.get("chronological_age_months") is None:
    age = "chronological age unknown: no BA - CA, no SDS"
  else:
    age = (f"chronological age {row['chronological_age_months']:.1f} months, "
           f"BA - CA {row['ba_minus_ca_months']:+.1f} months, ")
    age += (f"SDS {row['sds']:+.2f} ({row['sds_reading']})" if row.get("sds") is not None
            else f"no SDS ({row['sds_missing_reason']})")
  sr = os.path.join(run_dir, row["dicom_sr_path"]) if row.get("dicom_sr_path") else f"no SR ({row.get('dicom_status')})"
  # The input's sha256 and the rest of the row are in the predictions CSV and on the overlay.
  return [f"{row['id']} ({row['sex']}): {ba}", f"  {age}", f"  DICOM SR: {sr}"]


def main(out: str) -> int:
  cli.quiet_start([])  # Beam, loaded to read the run, warns at import time
  scores = _latest_scores(os.path.join(out, "scores"))
  run_dir = scores["run_dir"] if scores else os.path.join(out, "scores", "runs", "<none published>")
  shards = scores["manifest"]["files"] if scores else {}
  paths = {
      "dataset (TFDS)": _one(os.path.join(out, "tfds", "rsna_bone_age", "128px", "*")),
      "dataset rejects": _one(os.path.join(out, "tfds", "rsna_bone_age", "128px", "*", "rejects*.jsonl")),
      "TensorBoard logs": os.path.join(out, "model", "logs"),
      "resolved config": os.path.join(out, "model", "config.json"),
      "export (.keras + SavedModel)": os.path.join(out, "model", "export"),
      "metrics": os.path.join(out, "eval", "metrics.json"),
      "plots": os.path.join(out, "eval", "bland_altman.png"),
      "predictions (CSV shards)": os.path.join(run_dir, (shards.get("predictions_csv") or ["predictions-*.csv"])[0]),
      "overlays": os.path.join(run_dir, "overlays"),
      "DICOM SR + Secondary Capture": os.path.join(run_dir, "dicom"),
      "scoring rejects": os.path.join(run_dir, (shards.get("rejects_jsonl") or ["rejects-*.jsonl"])[0]),
      "scoring summary": os.path.join(run_dir, "summary.json"),
  }
  missing = [name for name, path in paths.items() if not os.path.exists(path)]
  if scores is None:
    missing.append("published scoring run")
  width = max(len(n) for n in paths)
  for name, path in paths.items():
    print(f"  {name:<{width}}  {path}{'   <-- MISSING' if name in missing else ''}")
  if missing:
    print(f"demo incomplete: missing {missing}")
    return 1

  with open(paths["metrics"]) as f:
    report = json.load(f)
  mae = report["overall"]["mae_months"]
  baseline = report["baseline"]["mae_months"]
  print(f"\n  test MAE {mae:.1f} months vs predict-the-training-mean {baseline:.1f} months "
        f"({100 * mae / baseline:.0f}% of the baseline) on {report['overall']['count']} synthetic phantoms")
  summary = scores["summary"]
  print(f"  scoring run {scores['run_id']}: read {summary['read']} = scored {summary['scored']} + rejected "
        f"{summary['rejected']} (every count in its summary.json)")
  share = report.get("gradcam_mask_share")
  if share:
    print(f"  Grad-CAM: {100 * share['heat_mass_in_mask_mean']:.0f}% of the heat lies in the age-signal mask, which "
          f"covers {100 * share['mask_area_fraction_mean']:.0f}% of the image ({share['ratio_to_area']:.1f}x)")
  interval = report.get("prediction_interval") or {}
  if interval.get("coverage") is not None:
    print(f"  {100 * interval['level']:g}% interval on the test split: coverage {100 * interval['coverage']:.0f}%, "
          f"mean width {interval['mean_width_months']:.1f} months ({interval['tta_views']} TTA views, "
          f"{interval['n_calibration']} calibration images)")
  print("\n  Three patients (research use only, not a medical device):")
  for row in _three_patients(scores["predictions"]):
    for line in patient_lines(row, run_dir):
      print(f"    {line}")
  print(f"\n  TensorBoard: tensorboard --logdir={paths['TensorBoard logs']}  (then open http://localhost:6006)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1]))
