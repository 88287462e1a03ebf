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


def main(out: str) -> int:
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
  print(f"  scoring run {scores['run_id']}: {json.dumps(summary, sort_keys=True)}")
  print("  first predictions (id, sex, bone age, overlay):")
  for row in scores["predictions"][:4]:
    print(f"    {row['id']}  {row['sex']}  {row['boneage']}  {row['overlay_path']}")
  print(f"\n  TensorBoard: tensorboard --logdir={paths['TensorBoard logs']}  (then open http://localhost:6006)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1]))
