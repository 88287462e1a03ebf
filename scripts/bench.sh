#!/usr/bin/env bash
# `make bench`: every benchmark in one run; each prints its ratio to a bare
# baseline measured in the same run and writes a JSON under $1 (bench_output/).
# Full sizes take ~20-30 minutes on 2 cores (Xception at 384 px scores ~12
# images/s); BENCH_SCORE_IMAGES shrinks the scoring benchmark.
set -euo pipefail
out=${1:-bench_output}
mkdir -p "$out"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
echo "=== benchmarks/bench_preprocess.py"
python benchmarks/bench_preprocess.py --output_dir="$out"
echo "=== benchmarks/bench_decode_integrity.py"
python benchmarks/bench_decode_integrity.py --output_dir="$out"
echo "=== benchmarks/bench_train.py"
python benchmarks/bench_train.py --output="$out/train.json"
echo "=== benchmarks/bench_score.py"
python benchmarks/bench_score.py --output_dir="$out" --num_images="${BENCH_SCORE_IMAGES:-1000}"
echo "=== benchmarks/bench_engine.py"
python benchmarks/bench_engine.py --output_dir="$out" --num_images="${BENCH_ENGINE_IMAGES:-48}"
echo "=== benchmarks/bench_score_scale.py"
python benchmarks/bench_score_scale.py --output_dir="$out"
echo "Benchmark numbers written to $out/*.json"
