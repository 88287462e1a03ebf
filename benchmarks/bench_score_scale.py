"""Benchmark: does boneage-score spread one archive over workers, and does memory stay flat?

For the same N phantom images, once as one zip and once as loose files, it
scores with Grad-CAM on
  - DirectRunner multi_processing with 1 and with 2 worker processes,
  - DaskRunner on a fresh local cluster of 1 and of 2 worker processes
    (threads_per_worker=1; beam_pipelines.dask_runner),
each run in a fresh launcher process, and reports per run:
  - start-up (launch to the first overlay written) apart from steady state:
    images/s between the 20th and the 90th percentile of overlay write times;
  - the 2-worker / 1-worker steady-state speedup (target >= 1.6x);
  - images scored per worker (the summary's `scored_per_worker`) and, on Dask,
    CPU seconds per worker process;
  - total CPU: launcher plus workers (Dask workers read with psutil through
    client.run; DirectRunner workers are the launcher's children).
For the zip it also scores once on one in-process DirectRunner worker and
compares the Dask workers' CPU with it (issue target: 2 Dask workers <= 1.5x).
Both figures are counted the same way: from after the interpreter's start and
the imports of TensorFlow, Beam and batch_inference (each Dask worker makes
them before its clock is read, the DirectRunner process before its own), so
both include loading and tracing the model and all work on the images. The
DirectRunner figure also holds the launcher's own work (building the
pipeline, listing, committing), which for Dask runs in the launcher and is
printed apart; the Dask figure holds all its workers do meanwhile (tasks,
heartbeats).
Then the peak worker RSS for a zip of N vs 4N images on Dask with 2 workers
and on DirectRunner with 2 workers (target: within 15%).

  .venv/bin/python benchmarks/bench_score_scale.py                    # tiny backbone, a few minutes
  .venv/bin/python benchmarks/bench_score_scale.py --num_images=800 --memory_images=400 \
      --backbone=xception --image_size_px=384                         # closer to production

Writes <output_dir>/score_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_score import ensure_export  # pylint: disable=g-import-not-at-top,wrong-import-position  (beside this file)
from beam_pipelines.runners import DASK_RUNNER  # pylint: disable=g-import-not-at-top,wrong-import-position

STEADY_FROM, STEADY_TO = 0.2, 0.9  # fractions of the images done: the steady-state window

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import tensorflow
from batch_inference import score
start = resource.getrusage(resource.RUSAGE_SELF)
summary = score.run({argv!r})
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print("BENCH_JSON " + json.dumps({{
    "launcher_job_cpu_s": me.ru_utime + me.ru_stime - start.ru_utime - start.ru_stime,
    "scored": summary["scored"], "rejected": summary["rejected"], "output_dir": summary["output_dir"],
    "scored_per_worker": summary.get("scored_per_worker") or None, "end_time": time.time(),
    "launcher_cpu_s": me.ru_utime + me.ru_stime, "children_cpu_s": kids.ru_utime + kids.ru_stime,
    "launcher_peak_rss_mib": me.ru_maxrss / 1024, "children_peak_rss_mib": kids.ru_maxrss / 1024}}))
"""


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_images", type=int, default=600, help="images in the zip / loose set of the speed runs")
  parser.add_argument("--memory_images", type=int, default=150, help="N of the N vs 4N zip memory runs (0 skips)")
  parser.add_argument("--height_px", type=int, default=520)
  parser.add_argument("--width_px", type=int, default=400)
  parser.add_argument("--image_size_px", type=int, default=128)
  parser.add_argument("--backbone", default="tiny")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--runners", default="direct,dask", help="comma-separated: direct, dask")
  parser.add_argument("--layouts", default="zip,loose", help="comma-separated: zip, loose")
  parser.add_argument("--dask_partition_size", type=int, default=0,
                      help="the scorer's --dask_partition_size (0: the runner's default)")
  parser.add_argument("--output_dir", default=str(REPO / "bench_output"))
  return parser.parse_args(argv)


def ensure_inputs(root: pathlib.Path, num_images: int, args) -> dict:
  """Phantoms as loose PNGs plus the same files in one zip, with their labels (cached)."""
  from bone_age import phantoms  # pylint: disable=g-import-not-at-top

  data_dir = root / f"scale_phantoms_{args.height_px}x{args.width_px}_{num_images}"
  archive = data_dir / "all.zip"
  if not archive.exists():
    phantoms.write_dataset(data_dir, num_images, seed=11, height_px=args.height_px, width_px=args.width_px)
    with zipfile.ZipFile(archive.with_suffix(".tmp"), "w", zipfile.ZIP_STORED) as z:
      for path in sorted((data_dir / "images").iterdir()):
        z.write(path, f"hands/{path.name}")
    archive.with_suffix(".tmp").rename(archive)
  return {"zip": str(archive), "loose": str(data_dir / "images" / "*.png"), "labels": str(data_dir / "labels.csv"),
          "images": num_images}


def _worker_cpu_s() -> float:
  """This worker's CPU seconds, after the imports the launcher child makes before reading its own."""
  import psutil  # pylint: disable=g-import-not-at-top
  import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  import batch_inference.score  # pylint: disable=g-import-not-at-top,unused-import
  times = psutil.Process().cpu_times()
  return times.user + times.system


def _worker_peak_rss_mib() -> float:
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def steady_state(output_dir: str, launched: float) -> dict:
  """Start-up and steady-state speed from the overlays' write times (one overlay per image)."""
  times = sorted(p.stat().st_mtime for p in pathlib.Path(output_dir).rglob("*.png"))
  if len(times) < 10:
    return {"overlays": len(times)}
  lo, hi = int(STEADY_FROM * (len(times) - 1)), int(STEADY_TO * (len(times) - 1))
  return {"overlays": len(times), "startup_s": times[0] - launched,
          "steady_images_per_s": (hi - lo) / max(times[hi] - times[lo], 1e-6)}


def score_once(export_dir, inputs: dict, layout: str, runner: str, workers: int, out: pathlib.Path, args) -> dict:
  """One boneage-score run in a fresh launcher (and, for Dask, a fresh cluster)."""
  argv = [f"--model_dir={export_dir}", f"--inputs={inputs[layout]}", f"--output_dir={out}",
          f"--metadata_csv={inputs['labels']}", f"--batch_size={args.batch_size}", "--gradcam=true",
          "--tta_views=1"]  # one forward per image: the graph's scaling, not TTA's cost
  cluster = client = None
  if runner == "dask":
    import distributed  # pylint: disable=g-import-not-at-top
    import dask  # pylint: disable=g-import-not-at-top
    # Without the dashboard's stack sampler, which costs worker CPU that is not the job's.
    with dask.config.set({"distributed.worker.profile.enabled": False}):
      cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                         dashboard_address=None)
    client = distributed.Client(cluster)
    cpu_before = client.run(_worker_cpu_s)
    argv += [f"--runner={DASK_RUNNER}", f"--dask_client_address={cluster.scheduler_address}"]
    if args.dask_partition_size:
      argv.append(f"--dask_partition_size={args.dask_partition_size}")
  elif runner == "direct_in_process":
    argv += ["--runner=DirectRunner"]  # one worker: the launcher itself runs the bundles
  else:
    argv += ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
  try:
    launched = time.time()
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(repo=str(REPO), argv=argv)], capture_output=True,
                          text=True, check=False)
    line = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_JSON ")]
    if proc.returncode != 0 or not line:
      raise RuntimeError(f"{runner} x{workers} on {layout} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run = json.loads(line[0][len("BENCH_JSON "):])
    run.update(layout=layout, runner=runner, workers=workers, wall_s=run.pop("end_time") - launched,
               **steady_state(run["output_dir"], launched))
    if client is not None:
      cpu_after = client.run(_worker_cpu_s)
      run["worker_cpu_s"] = {w: cpu_after[w] - cpu_before.get(w, 0.0) for w in cpu_after}
      run["worker_peak_rss_mib"] = client.run(_worker_peak_rss_mib)
      run["total_cpu_s"] = run["launcher_cpu_s"] + sum(run["worker_cpu_s"].values())
    else:
      run["total_cpu_s"] = run["launcher_cpu_s"] + run["children_cpu_s"]
    if run["scored"] != inputs["images"]:
      raise RuntimeError(f"{runner} x{workers} on {layout} scored {run['scored']} of {inputs['images']}")
    counts = list((run["scored_per_worker"] or {}).values())
    run["busiest_worker_share"] = max(counts) / sum(counts) if counts else None
    return run
  finally:
    if client is not None:
      client.close()
      cluster.close()


def _peak_worker_rss(run: dict) -> float:
  if run["runner"] == "dask":
    return max(run["worker_peak_rss_mib"].values())
  return run["children_peak_rss_mib"]  # the largest DirectRunner worker process


def _cpu_over_direct(report: dict, export_dir, inputs: dict, work: pathlib.Path, args) -> dict:
  """Dask workers' CPU on the zip vs one in-process DirectRunner worker's, both counted after imports."""
  base = score_once(export_dir, inputs, "zip", "direct_in_process", 1, work / "zip_direct_in_process", args)
  report["runs"].append(base)
  out = {"direct_in_process_cpu_s": base["launcher_job_cpu_s"]}
  for run in report["runs"]:
    if run["runner"] == "dask" and run["layout"] == "zip":
      workers_cpu_s = sum(run["worker_cpu_s"].values())
      out[f"dask_x{run['workers']}"] = {"workers_cpu_s": workers_cpu_s, "launcher_cpu_s": run["launcher_job_cpu_s"],
                                         "ratio": workers_cpu_s / base["launcher_job_cpu_s"]}
  return out


def main(argv=None) -> dict:
  args = _parse_args(argv)
  root = pathlib.Path(args.output_dir).resolve()
  root.mkdir(parents=True, exist_ok=True)
  export_dir = ensure_export(root, args)
  inputs = ensure_inputs(root, args.num_images, args)
  runners, layouts = args.runners.split(","), args.layouts.split(",")
  report = {"config": vars(args), "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(),
            "runs": [], "speedup_2_over_1": {}}
  work = root / "score_scale_runs"
  for layout in layouts:
    for runner in runners:
      for workers in (1, 2):
        run = score_once(export_dir, inputs, layout, runner, workers, work / f"{layout}_{runner}_{workers}", args)
        report["runs"].append(run)
        print(f"{layout:5s} {runner:6s} x{workers}: {run['wall_s']:6.1f} s wall, start-up "
              f"{run.get('startup_s', float('nan')):5.1f} s, steady {run.get('steady_images_per_s', float('nan')):6.2f}"
              f" img/s, total CPU {run['total_cpu_s']:6.1f} s, per worker {run['scored_per_worker']}", flush=True)
      one, two = report["runs"][-2], report["runs"][-1]
      if "steady_images_per_s" in one and "steady_images_per_s" in two:
        report["speedup_2_over_1"][f"{layout}_{runner}"] = two["steady_images_per_s"] / one["steady_images_per_s"]
    if layout == "zip" and "dask" in runners:
      report["cpu_over_direct"] = _cpu_over_direct(report, export_dir, inputs, work, args)
  if args.memory_images:
    report["memory"] = {}
    for runner in runners:
      small_inputs = ensure_inputs(root, args.memory_images, args)
      large_inputs = ensure_inputs(root, 4 * args.memory_images, args)
      small = score_once(export_dir, small_inputs, "zip", runner, 2, work / f"mem_{runner}_n", args)
      large = score_once(export_dir, large_inputs, "zip", runner, 2, work / f"mem_{runner}_4n", args)
      report["memory"][runner] = {
          "n": args.memory_images, "peak_worker_rss_n_mib": _peak_worker_rss(small),
          "peak_worker_rss_4n_mib": _peak_worker_rss(large),
          "growth": _peak_worker_rss(large) / _peak_worker_rss(small) - 1.0}
  report["load_average_at_end"] = os.getloadavg()
  (root / "score_scale.json").write_text(json.dumps(report, indent=2) + "\n")
  _print_summary(report, args)
  print(f"wrote {root / 'score_scale.json'}")
  return report


def _print_summary(report: dict, args) -> None:
  print(f"\n== boneage-score scale benchmark: {args.num_images} phantoms {args.height_px}x{args.width_px}, "
        f"{args.backbone} {args.image_size_px}px, Grad-CAM, batch {args.batch_size} ==")
  by_key = {(r["layout"], r["runner"]): r for r in report["runs"] if r["workers"] == 1}
  cpu = report.get("cpu_over_direct")
  for run in report["runs"]:
    base = by_key[(run["layout"], run["runner"])]
    share = run["busiest_worker_share"]
    print(f"{run['layout']:5s} {run['runner']:6s} x{run['workers']}  steady "
          f"{run.get('steady_images_per_s', float('nan')):6.2f} img/s  start-up {run.get('startup_s', float('nan')):5.1f} s"
          f"  busiest worker {'n/a' if share is None else f'{share:.0%}'}  total CPU {run['total_cpu_s']:6.1f} s "
          f"= {run['total_cpu_s'] / base['total_cpu_s']:.2f}x its 1-worker run")
  if cpu:
    print(f"CPU after imports, model load included: one in-process DirectRunner worker (launcher included) "
          f"{cpu['direct_in_process_cpu_s']:.1f} s")
    for key in ("dask_x1", "dask_x2"):
      if key in cpu:
        print(f"  Dask {key[-2:]} workers {cpu[key]['workers_cpu_s']:.1f} s = {cpu[key]['ratio']:.2f}x (target for x2 "
              f"<= 1.5x); its launcher {cpu[key]['launcher_cpu_s']:.1f} s, not counted")
  for key, speedup in report["speedup_2_over_1"].items():
    print(f"2 / 1 workers, steady state, {key}: {speedup:.2f}x (target >= 1.6x)")
  for runner, mem in report.get("memory", {}).items():
    print(f"peak worker RSS, zip of {mem['n']} vs {4 * mem['n']} images, {runner} x2: "
          f"{mem['peak_worker_rss_n_mib']:.0f} vs {mem['peak_worker_rss_4n_mib']:.0f} MiB = {mem['growth']:+.1%} "
          "(target within 15%)")
  print(f"load average start {report['load_average_at_start']}, end {report['load_average_at_end']}")


if __name__ == "__main__":
  main()
