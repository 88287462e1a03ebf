"""Prints where the demo put everything and the headline numbers.

Fails (exit 1) if any artefact the demo promises is missing, so `make demo`
cannot report success over a broken stage.
Usage: python scripts/demo_summary.py DEMO_OUTPUT_DIR
"""

import glob
import json
import os
import sys


def _one(pattern: str) -> str:
  matches = sorted(glob.glob(pattern))
  return matches[-1] if matches else pattern


def main(out: str) -> int:
  paths = {
      "dataset (TFDS)": _one(os.path.join(out, "tfds", "rsna_bone_age", "128px", "*")),
      "dataset rejects": _one(os.path.join(out, "tfds", "rsna_bone_age", "128px", "*", "rejects*.jsonl")),
      "TensorBoard logs": os.path.join(out, "model", "logs"),
      "resolved config": os.path.join(out, "model", "config.json"),
      "export (.keras + SavedModel)": os.path.join(out, "model", "export"),
      "metrics": os.path.join(out, "eval", "metrics.json"),
      "plots": os.path.join(out, "eval", "bland_altman.png"),
      "predictions": os.path.join(out, "scores", "predictions.csv"),
      "overlays": os.path.join(out, "scores", "overlays"),
      "scoring rejects": os.path.join(out, "scores", "rejects.jsonl"),
  }
  missing = [name for name, path in paths.items() if not os.path.exists(path)]
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
  with open(os.path.join(out, "scores", "summary.json")) as f:
    summary = json.load(f)
  print(f"  scoring: {json.dumps(summary, sort_keys=True)}")
  with open(paths["predictions"]) as f:
    print("  first predictions:")
    for line in f.readlines()[:4]:
      print("    " + line.rstrip()[:160])
  print(f"\n  TensorBoard: tensorboard --logdir={paths['TensorBoard logs']}  (then open http://localhost:6006)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1]))
