"""Rewrites the README's demo-numbers paragraph from a finished `make demo` run.

Usage: python scripts/readme_demo_numbers.py [DEMO_OUTPUT_DIR] [README]

Reads DEMO_OUTPUT_DIR/demo_timings.tsv (written by scripts/demo.sh) and
DEMO_OUTPUT_DIR/eval/metrics.json, and replaces the text between the
`<!-- demo-numbers -->` and `<!-- /demo-numbers -->` markers, so the README
quotes the numbers of a real run instead of numbers typed by hand.
"""

import csv
import datetime
import json
import os
import sys

START, END = "<!-- demo-numbers -->", "<!-- /demo-numbers -->"


def paragraph(out: str) -> str:
  with open(os.path.join(out, "demo_timings.tsv"), encoding="utf-8") as f:
    seconds = {row["stage"]: int(row["seconds"]) for row in csv.DictReader(f, delimiter="\t")}
  with open(os.path.join(out, "eval", "metrics.json"), encoding="utf-8") as f:
    report = json.load(f)
  mae, baseline = report["overall"]["mae_months"], report["baseline"]["mae_months"]
  stages = ", ".join(f"{name} {s} s" for name, s in seconds.items() if name != "total")
  day = datetime.date.today().isoformat()
  return (f"Last `make demo` quoted here ({day}, written by `scripts/readme_demo_numbers.py` from "
          f"`demo_output/demo_timings.tsv` and `demo_output/eval/metrics.json`): test MAE {mae:.1f} months vs "
          f"{baseline:.1f} for predicting the training mean; {seconds['total']} s in all (stages {stages}).")


def main(argv: list[str]) -> int:
  if any(a in ("-h", "--help") for a in argv[1:]):
    print(__doc__)
    return 0
  out = argv[1] if len(argv) > 1 else "demo_output"
  readme = argv[2] if len(argv) > 2 else "README.md"
  with open(readme, encoding="utf-8") as f:
    text = f.read()
  if START not in text or END not in text:
    print(f"{readme}: no {START} ... {END} block", file=sys.stderr)
    return 2
  head, rest = text.split(START, 1)
  _, tail = rest.split(END, 1)
  new_paragraph = paragraph(out)  # before the README is opened for writing: a failure leaves it whole
  with open(readme, "w", encoding="utf-8") as f:
    f.write(f"{head}{START}\n{new_paragraph}\n{END}{tail}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
