"""Prints the README's quality-gate table: what the gate does with each kind of input.

For inputs that are unusable as they are (bone_age.quality_corpus: mirrored,
inverted, rotated, small or partial hands, non-hand radiographs, text, noise,
blank frames, DICOMs of other modalities and body parts, pydicom's bundled
test files) it counts the share rejected or flagged; for good phantoms and
real radiographs the share passed with no reject and no flag. Every input
runs the scorer's and the builder's own path: decode, then the gate.

  python scripts/quality_table.py --policy=strict --real_dir=<folder of real radiographs, e.g. the RSNA sample images>

The gate's thresholds were set on the corpus of --seed=1 and --seed=2 (and
the real sample, which every threshold must pass); the README's table uses
--seed=3 (the default), drawn only to report. Tune on 1 or 2, never on 3.
"""

import argparse
import collections
import sys
import time

from bone_age import errors
from bone_age import imaging
from bone_age import quality
from bone_age import quality_corpus

TUNING_SEEDS = (1, 2)
REPORT_SEED = 3


def judge(case: quality_corpus.Case, policy: str, verbose: bool = False) -> tuple[str, str]:
  """('rejected', reason) | ('flagged', codes) | ('passed', '') for one input."""
  try:
    radiograph = imaging.decode_radiograph(case.data, case.name)
    result = quality.apply_gate(radiograph, case.name, policy)
  except errors.InputError as e:
    return "rejected", e.reason + (f" ({e.detail})" if verbose else "")
  except Exception as e:  # pylint: disable=broad-except  (the pipeline turns these into rejects too)
    return "rejected", f"decoder failure {type(e).__name__}"
  if result.flags:
    return "flagged", ",".join(sorted({f.code for f in result.flags}))
  return "passed", ""


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--policy", default=quality.STRICT, choices=quality.POLICIES)
  parser.add_argument("--num_phantoms", type=int, default=40, help="phantoms per variant")
  parser.add_argument("--seed", type=int, default=REPORT_SEED,
                      help=f"corpus seed: {TUNING_SEEDS} set the thresholds, {REPORT_SEED} is kept for reporting")
  parser.add_argument("--real_dir", default=None, help="folder of real left-hand PNG radiographs (all must pass)")
  parser.add_argument("--verbose", action="store_true", help="print every input's outcome")
  args = parser.parse_args(argv)
  start = time.process_time()
  cases = quality_corpus.cases(args.num_phantoms, args.seed) + quality_corpus.pydicom_test_files()
  if args.real_dir:
    cases += quality_corpus.real_sample(args.real_dir)
  by_kind = collections.defaultdict(collections.Counter)
  expected = {}
  totals = collections.Counter()
  for case in cases:
    outcome, why = judge(case, args.policy, args.verbose)
    by_kind[case.kind][outcome] += 1
    by_kind[case.kind][f"{outcome}:{why}"] += 1
    expected[case.kind] = case.expected
    good = outcome == "passed" if case.expected == quality_corpus.PASS else outcome != "passed"
    totals[(case.expected, good)] += 1
    if args.verbose:
      print(f"{case.kind:22s} {case.name:40s} {outcome:8s} {why}")
  print(f"quality gate, policy={args.policy}, {len(cases)} inputs, {time.process_time() - start:.1f} CPU s\n")
  print("| input kind | n | expected | passed | flagged | rejected | main reasons |")
  print("|---|---|---|---|---|---|---|")
  for kind, counts in by_kind.items():
    n = counts["passed"] + counts["flagged"] + counts["rejected"]
    reasons = collections.Counter({k.split(":", 1)[1]: v for k, v in counts.items() if ":" in k and k.split(":", 1)[1]})
    top = ", ".join(f"{r} {v}" for r, v in reasons.most_common(3))
    print(f"| {kind} | {n} | {expected[kind]} | {counts['passed']} | {counts['flagged']} | {counts['rejected']} "
          f"| {top} |")
  bad_ok = totals[(quality_corpus.HANDLE, True)]
  bad_n = bad_ok + totals[(quality_corpus.HANDLE, False)]
  good_ok = totals[(quality_corpus.PASS, True)]
  good_n = good_ok + totals[(quality_corpus.PASS, False)]
  print(f"\nunusable inputs rejected or flagged: {bad_ok}/{bad_n} = {100 * bad_ok / max(1, bad_n):.1f}% (target >= 95%)")
  print(f"good inputs passed: {good_ok}/{good_n} = {100 * good_ok / max(1, good_n):.1f}% (target >= 98%)")
  if args.real_dir:
    real = by_kind["real_rsna"]
    print(f"real radiographs passed: {real['passed']}/{sum(real[o] for o in ('passed', 'flagged', 'rejected'))}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
