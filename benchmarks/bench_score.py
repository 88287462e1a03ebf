"""Benchmark of boneage-score: pipeline throughput vs a bare model, and memory vs input count.

What it measures, in one run, on the same machine:
  1. bare: the exported model's batched forward (predict_on_batch, the same
     padding as the handler) over images already decoded and letterboxed in
     memory: the ceiling for the scorer. Decoding speed is reported beside it.
  2. score: boneage-score end to end (match, read, decode, letterbox,
     RunInference, write) on the same files, without and with Grad-CAM;
     printed as images/s and as a fraction of the bare forward.
  3. memory: peak RSS of a fresh process scoring N images and 4N images
     (the N files plus 3 sets of symlinks with other names: 4N distinct
     inputs, no extra disk), which must stay flat if nothing is held per image.

Data: phantoms (bone_age.phantoms.write_dataset) at 2080x1600, cached under
bench_output/. Model: Xception at 384 px, weights=None (ImageNet weights need
the network; speed does not depend on the weights), exported once and cached.

  .venv/bin/python benchmarks/bench_score.py --num_images=1000       # the full configuration
  .venv/bin/python benchmarks/bench_score.py --num_images=96 --memory_images=48   # what fits a busy 2-core CPU

Writes bench_output/score.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_images", type=int, default=1000, help="images for the throughput runs")
  parser.add_argument("--memory_images", type=int, default=None,
                      help="N of the N vs 4N peak-memory runs (default: --num_images; 0 skips them)")
  parser.add_argument("--height_px", type=int, default=2080)
  parser.add_argument("--width_px", type=int, default=1600)
  parser.add_argument("--image_size_px", type=int, default=384)
  parser.add_argument("--backbone", default="xception")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--image_format", default="png", choices=("png", "dicom", "mixed"))
  parser.add_argument("--output_dir", default=str(REPO / "bench_output"))
  parser.add_argument("--beam_args", default="", help="extra Beam options for the scoring runs, space-separated")
  parser.add_argument("--skip_gradcam", action="store_true")
  parser.add_argument("--engine", default="tensorflow", help="the scorer's --engine (batch_inference/engines.py)")
  parser.add_argument("--precision", default="float32", help="the scorer's --precision")
  return parser.parse_args(argv)


def ensure_dataset(root: pathlib.Path, num_images: int, args) -> pathlib.Path:
  """The cached phantom set (rebuilt only when the size or count differs)."""
  from bone_age import phantoms  # pylint: disable=g-import-not-at-top

  data_dir = root / f"phantoms_{args.image_format}_{args.height_px}x{args.width_px}_{num_images}"
  labels = data_dir / "labels.csv"
  if labels.exists() and len(labels.read_text().splitlines()) == num_images + 1:
    return data_dir
  start = time.perf_counter()
  phantoms.write_dataset(data_dir, num_images, seed=7, height_px=args.height_px, width_px=args.width_px,
                         image_format=args.image_format)
  print(f"wrote {num_images} phantoms in {time.perf_counter() - start:.0f} s to {data_dir}", flush=True)
  return data_dir


def ensure_export(root: pathlib.Path, args) -> pathlib.Path:
  from bone_age import export  # pylint: disable=g-import-not-at-top
  from bone_age import model as ba_model  # pylint: disable=g-import-not-at-top

  export_dir = root / f"export_{args.backbone}_{args.image_size_px}"
  if (export_dir / export.EXPORT_METADATA_FILE).exists():
    return export_dir
  model = ba_model.build_model(image_size_px=args.image_size_px, age_group_edges_months=[113.0, 150.0],
                               backbone=args.backbone, weights=None)
  export.save_export(model, str(export_dir), {"backbone": args.backbone, "dataset_version": "bench-phantoms"})
  return export_dir


def image_files(data_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in (data_dir / "images").iterdir() if p.suffix in (".png", ".dcm"))


def bare_forward(export_dir: pathlib.Path, files: list[pathlib.Path], args) -> dict:
  """Decode + letterbox everything first (timed apart), then the batched forward alone."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from bone_age import export  # pylint: disable=g-import-not-at-top
  from bone_age import imaging  # pylint: disable=g-import-not-at-top
  from bone_age import letterbox  # pylint: disable=g-import-not-at-top
  from batch_inference import handler  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  squares = []
  for path in files:
    radiograph = imaging.decode_radiograph(path.read_bytes(), str(path))
    squares.append(letterbox.letterbox(radiograph.pixels, args.image_size_px)[0])
  decode_s = time.perf_counter() - start
  model, _ = export.load_export(str(export_dir))
  male = np.ones((args.batch_size,), np.float32)
  warm_images, warm_male = handler.stack_requests([handler.ScoreRequest(squares[0], 1.0)], args.batch_size)
  handler.forward(model, warm_images, warm_male)  # tracing, excluded
  cpu_start = time.process_time()
  start = time.perf_counter()
  for i in range(0, len(squares), args.batch_size):
    batch = [handler.ScoreRequest(s, float(m)) for s, m in zip(squares[i:i + args.batch_size], male)]
    images, sexes = handler.stack_requests(batch, args.batch_size)
    handler.forward(model, images, sexes)
  forward_s = time.perf_counter() - start
  forward_cpu_s = time.process_time() - cpu_start
  return {"images": len(files), "decode_letterbox_s": decode_s, "decode_images_per_s": len(files) / decode_s,
          "forward_s": forward_s, "forward_images_per_s": len(files) / forward_s,
          "forward_cpu_s": forward_cpu_s, "forward_images_per_cpu_s": len(files) / forward_cpu_s}


def score_once(export_dir, inputs_pattern, metadata_csv, output_dir, gradcam: bool, args) -> dict:
  from batch_inference import score  # pylint: disable=g-import-not-at-top

  argv = [f"--model_dir={export_dir}", f"--inputs={inputs_pattern}", f"--output_dir={output_dir}",
          f"--metadata_csv={metadata_csv}", f"--batch_size={args.batch_size}", f"--gradcam={str(gradcam).lower()}",
          f"--engine={args.engine}", f"--precision={args.precision}",
          "--tta_views=1"]  # one forward per image, like the bare baseline
  argv += args.beam_args.split()
  cpu_start = time.process_time()
  start = time.perf_counter()
  summary = score.run(argv)
  elapsed = time.perf_counter() - start
  cpu_s = time.process_time() - cpu_start  # this process only: meaningful for the in-process runners
  return {"gradcam": gradcam, "wall_s": elapsed, "cpu_s": cpu_s, "scored": summary["scored"],
          "rejected": summary["rejected"], "images_per_s": summary["scored"] / elapsed,
          "images_per_cpu_s": summary["scored"] / cpu_s}


_MEMORY_CHILD = """
import json, resource, sys
sys.path.insert(0, {repo!r})
from batch_inference import score
summary = score.run({argv!r})
rss_kib = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")][0]
print("BENCH_JSON " + json.dumps({{"scored": summary["scored"], "rejected": summary["rejected"],
                                   "run_dir": summary["output_dir"],
                                   "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                   "rss_at_end_mib": rss_kib / 1024}}))
"""


def peak_memory(export_dir, data_dir: pathlib.Path, copies: int, work: pathlib.Path, args) -> dict:
  """Peak RSS of a fresh process scoring `copies` x the N images (with Grad-CAM: originals kept for overlays)."""
  inputs = work / f"x{copies}"
  inputs.mkdir()
  lines = ["id,male"]
  labels = {row.split(",")[0]: row.split(",")[2] for row in (data_dir / "labels.csv").read_text().splitlines()[1:]}
  for copy in range(copies):
    for path in image_files(data_dir):
      link = inputs / f"{path.stem}_{copy}{path.suffix}"
      link.symlink_to(path.resolve())
      lines.append(f"{path.stem}_{copy},{labels[path.stem]}")
  (work / f"meta{copies}.csv").write_text("\n".join(lines) + "\n")
  argv = [f"--model_dir={export_dir}", f"--inputs={inputs}/*", f"--output_dir={work / f'out{copies}'}",
          f"--metadata_csv={work / f'meta{copies}.csv'}", f"--batch_size={args.batch_size}", "--gradcam=true",
          "--tta_views=1"]
  argv += args.beam_args.split()
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD.format(repo=str(REPO), argv=argv)],
                        capture_output=True, text=True, check=False)
  line = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_JSON ")]
  if proc.returncode != 0 or not line:
    raise RuntimeError(f"memory run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  result = json.loads(line[0][len("BENCH_JSON "):])
  if result["scored"] != copies * len(image_files(data_dir)):
    # A memory figure of a run that scored nothing (or part) would say nothing.
    raise RuntimeError(f"memory run scored {result['scored']} of {copies * len(image_files(data_dir))} images "
                       f"({result['rejected']} rejected): see the rejects-*.jsonl of {result['run_dir']}")
  result.update(inputs=copies * len(image_files(data_dir)), wall_s=time.perf_counter() - start)
  return result


def main(argv=None) -> dict:
  args = _parse_args(argv)
  # Absolute: the memory runs link to these files from another folder.
  root = pathlib.Path(args.output_dir).resolve()
  root.mkdir(parents=True, exist_ok=True)
  memory_images = args.num_images if args.memory_images is None else args.memory_images
  data_dir = ensure_dataset(root, args.num_images, args)
  export_dir = ensure_export(root, args)
  files = image_files(data_dir)
  report = {"config": {k: v for k, v in vars(args).items()}, "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg()}

  report["bare"] = bare_forward(export_dir, files, args)
  print(f"bare forward: {report['bare']['forward_images_per_s']:.2f} img/s "
        f"(decode+letterbox alone: {report['bare']['decode_images_per_s']:.1f} img/s)", flush=True)
  with tempfile.TemporaryDirectory(dir=root) as work:
    runs = [score_once(export_dir, f"{data_dir}/images/*", data_dir / "labels.csv", pathlib.Path(work) / "plain",
                       False, args)]
    if not args.skip_gradcam:
      runs.append(score_once(export_dir, f"{data_dir}/images/*", data_dir / "labels.csv",
                             pathlib.Path(work) / "gradcam", True, args))
  bare = report["bare"]["forward_images_per_s"]
  bare_cpu = report["bare"]["forward_images_per_cpu_s"]
  for run in runs:
    run["fraction_of_bare_forward"] = run["images_per_s"] / bare
    run["cpu_fraction_of_bare_forward"] = run["images_per_cpu_s"] / bare_cpu
  report["score"] = runs
  if len(runs) == 2:
    report["gradcam_overhead"] = runs[0]["images_per_s"] / runs[1]["images_per_s"] - 1.0
    report["gradcam_cpu_overhead"] = runs[1]["cpu_s"] / runs[0]["cpu_s"] - 1.0

  if memory_images:
    memory_dir = ensure_dataset(root, memory_images, args)
    with tempfile.TemporaryDirectory(dir=root) as work:
      small = peak_memory(export_dir, memory_dir, 1, pathlib.Path(work), args)
      large = peak_memory(export_dir, memory_dir, 4, pathlib.Path(work), args)
    report["memory"] = {"n": small, "4n": large, "growth": large["peak_rss_mib"] / small["peak_rss_mib"] - 1.0}

  report["load_average_at_end"] = os.getloadavg()
  (root / "score.json").write_text(json.dumps(report, indent=2) + "\n")
  print("\n== boneage-score benchmark ==")
  print(f"{len(files)} phantoms {args.height_px}x{args.width_px} {args.image_format}, {args.backbone} "
        f"{args.image_size_px}px, batch {args.batch_size}, Beam args: {args.beam_args or '(DirectRunner in-process)'}")
  print("(wall clock, and per CPU-second of this process: the machine is shared, CPU time is steadier)")
  print(f"bare batched forward     {bare:7.2f} img/s            {bare_cpu:7.2f} img/CPU-s")
  for run in runs:
    label = "score + Grad-CAM" if run["gradcam"] else "score (no Grad-CAM)"
    print(f"{label:24s} {run['images_per_s']:7.2f} img/s = {run['fraction_of_bare_forward']:4.0%}  "
          f"{run['images_per_cpu_s']:7.2f} img/CPU-s = {run['cpu_fraction_of_bare_forward']:4.0%} of bare "
          f"(target >= 85% without Grad-CAM)")
  if "gradcam_overhead" in report:
    print(f"Grad-CAM overhead        {report['gradcam_overhead']:+.0%} wall, {report['gradcam_cpu_overhead']:+.0%} CPU "
          "(target <= +20%)")
  if "memory" in report:
    mem = report["memory"]
    print(f"peak RSS {mem['n']['inputs']} images {mem['n']['peak_rss_mib']:.0f} MiB, "
          f"{mem['4n']['inputs']} images {mem['4n']['peak_rss_mib']:.0f} MiB: {mem['growth']:+.1%} (target within 10%); "
          f"RSS after the run {mem['n']['rss_at_end_mib']:.0f} vs {mem['4n']['rss_at_end_mib']:.0f} MiB")
  print(f"load average start {report['load_average_at_start']}, end {report['load_average_at_end']}")
  print(f"wrote {root / 'score.json'}")
  return report


if __name__ == "__main__":
  main()
