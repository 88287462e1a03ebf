#!/usr/bin/env bash
# `make bench`: every benchmark in one run; each prints its ratio to a bare
# baseline measured in the same run and writes a JSON under $1 (bench_output/).
set -euo pipefail
out=${1:-bench_output}
mkdir -p "$out"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
for bench in bench_preprocess bench_train bench_score; do
  echo "=== benchmarks/$bench.py"
  python "benchmarks/$bench.py" --output_dir="$out"
done
echo "Benchmark numbers written to $out/*.json"
