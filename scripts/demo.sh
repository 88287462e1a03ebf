#!/usr/bin/env bash
# `make demo`: the whole chain on built-in phantoms, on 2 CPU cores.
#   phantoms -> TFDS build on Beam -> train demo_cpu -> evaluate -> export
#   -> score a zip (PNG + DICOM + one corrupt file) with Grad-CAM, DICOM SR and
#   Secondary Capture -> summary.
# Every stage is one of the console scripts the README documents.
set -euo pipefail
out=${1:-demo_output}
# Shrunk by tests/test_demo_console.py to check the console in minutes; `make demo` uses the defaults.
num_images=${DEMO_NUM_IMAGES:-640}
read -r -a train_extra <<< "${DEMO_TRAIN_FLAGS:-}"
rm -rf "$out"
mkdir -p "$out"
# The commands keep their own consoles quiet (--verbosity=debug brings the libraries' lines back).
export PYTHONUNBUFFERED=1
start=$SECONDS
stage_start=$SECONDS
stage_name=""
timings="$out/demo_timings.tsv"
printf 'stage\tseconds\n' > "$timings"
# Each stage's seconds go to demo_timings.tsv; scripts/readme_demo_numbers.py quotes them in the README.
end_stage() { if [ -n "$stage_name" ]; then printf '%s\t%s\n' "$stage_name" "$((SECONDS - stage_start))" >> "$timings"; fi; }
# The "===" header sets each stage apart without a blank line (the console budget: tests/test_demo_console.py).
stage() { end_stage; stage_name="${1%% *}"; stage_start=$SECONDS; echo "=== [$((SECONDS - start))s] $*"; }

stage "1/6 Synthetic hand phantoms (generic layout: labels.csv + images/)"
boneage-phantoms --output_dir="$out/phantoms" --num_images="$num_images" --seed=0

stage "2/6 TFDS build of rsna_bone_age/128px on Beam (DirectRunner, 2 workers)"
boneage-preprocess --manual_dir="$out/phantoms" --data_dir="$out/tfds" --config=128px \
  --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing

stage "3/6 Train demo_cpu (TensorBoard logs under $out/model/logs)"
boneage-train --data_dir="$out/tfds" --model_dir="$out/model" --experiment=demo_cpu ${train_extra[@]+"${train_extra[@]}"}

stage "4/6 Evaluate the export on the untouched test split"
boneage-evaluate --data_dir="$out/tfds" --model_dir="$out/model" --split=test --output_dir="$out/eval" \
  --masks_dir="$out/phantoms/masks"

stage "5/6 Score a zip of PNG + DICOM phantoms and one corrupt file, with Grad-CAM (into $out/scores/runs/<run id>/)"
boneage-phantoms --output_dir="$out/to_score_png" --num_images=12 --seed=101 --first_id=900001
boneage-phantoms --output_dir="$out/to_score_dicom" --num_images=8 --seed=102 --first_id=910001 --image_format=dicom
python scripts/make_demo_archive.py "$out/to_score_png" "$out/to_score_dicom" "$out/pacs_export.zip" "$out/pacs_export_metadata.csv"
boneage-score --model_dir="$out/model" --inputs="$out/pacs_export.zip" --metadata_csv="$out/pacs_export_metadata.csv" \
  --output_dir="$out/scores" --gradcam=true --dicom_outputs=true --runner=DirectRunner

stage "6/6 Summary"
python scripts/demo_summary.py "$out"
end_stage
printf 'total\t%s\n' "$((SECONDS - start))" >> "$timings"
echo "Demo work took $((SECONDS - start)) s (per stage: $timings)."
