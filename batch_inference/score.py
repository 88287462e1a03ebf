"""boneage-score: bone age for every radiograph in files and archives, with Beam.

  boneage-score --model_dir=EXPORT_OR_MODEL_DIR --inputs=PATTERN[,PATTERN...]
      --output_dir=DIR [--metadata_csv=CSV] [--gradcam=true]
      [--unknown_sex=reject|both|male|female] [--batch_size=N]
      [--engine=tensorflow|openvino|auto] [--precision=float32|bf16|int8|auto]
      [--tta_views=N] [--interval_alpha=A] [Beam options]

Beam options (--runner=DirectRunner|DaskRunner|DataflowRunner,
--direct_running_mode, --dask_client_address, --project, --setup_file, ...)
are the flags this command does not define; each must be one Beam's option
parser knows (a mistyped flag is a usage error, exit 2), and they are handed
to Beam as explicit PipelineOptions, never parsed from sys.argv. See
batch_inference/README.md.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import sys

# First: the console's log levels are set before Beam logs its import-time warnings (bone_age/cli.py).
from bone_age import cli
cli.quiet_start()

# pylint: disable=g-import-not-at-top,g-bad-import-order,wrong-import-position
import apache_beam as beam
from absl import flags
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import progress
from beam_pipelines import runners
from bone_age import age_groups
from bone_age import conformal
from bone_age import errors
from bone_age import imaging
from bone_age import provenance
from bone_age import quality
from bone_age import tta
from batch_inference import dicom_outputs
from batch_inference import engines
from batch_inference import handler
from batch_inference import overlays
from batch_inference import patients
from batch_inference import pipeline as scoring
from batch_inference import runs
from batch_inference import sources
from batch_inference import writers

_PROG = "boneage-score"
_USAGE = "--model_dir=EXPORT_OR_RUN --inputs=PATTERN[,...] --output_dir=DIR [flags] [Beam options]"
_FLAG_GROUPS = (
    cli.FlagGroup("Model and inputs", ("model_dir", "inputs", "inputs_manifest", "allow_empty_patterns",
                                       "metadata_csv", "unknown_sex")),
    cli.FlagGroup("Outputs", ("output_dir", "gradcam", "overlay_max_px", "dicom_outputs", "dicomweb_url")),
    cli.FlagGroup("Engine", ("engine", "precision", "batch_size")),
    cli.FlagGroup("Uncertainty", ("tta_views", "interval_alpha")),
    cli.FlagGroup("Input limits and quality", ("quality_gate", "max_member_bytes", "members_per_read",
                                               "max_pixels")),
)
# Reject reasons meaning an input could not even be reached; a run with only these read nothing.
_NOTHING_READ_REASONS = frozenset({errors.MISSING_FILE, errors.LISTING_FAILED})


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
  model_dir: str
  inputs: tuple[str, ...]
  output_dir: str
  metadata_csv: str | None = None
  gradcam: bool = False
  unknown_sex: str = patients.UNKNOWN_SEX_REJECT
  batch_size: int = 8
  max_member_bytes: int = sources.DEFAULT_MAX_MEMBER_BYTES
  max_pixels: int = imaging.DEFAULT_MAX_PIXELS
  overlay_max_px: int = overlays.DEFAULT_OVERLAY_MAX_PX
  inputs_manifest: str | None = None
  allow_empty_patterns: bool = False
  members_per_read: int = sources.DEFAULT_MEMBERS_PER_READ
  dicom_outputs: bool = False
  dicomweb_url: str | None = None
  engine: str = "tensorflow"
  precision: str = engines.FLOAT32
  quality_gate: str = quality.DEFAULT_POLICY
  tta_views: int = tta.DEFAULT_VIEWS
  interval_alpha: float = conformal.DEFAULT_ALPHA

# --batch_size=0 picks CPU_BATCH_SIZE, or engines.GPU_MIN_BATCH_SIZE for GPU workers.
CPU_BATCH_SIZE = 8


def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("model_dir", None, "Export dir (has export_metadata.json) or a model_dir holding export/.",
                      flag_values=fv)
  flags.DEFINE_list("inputs", [], "Comma-separated file patterns (local or gs://) of PNG, JPEG, DICOM files and "
                    ".zip/.tar/.tar.gz archives of them.", flag_values=fv)
  flags.DEFINE_string("inputs_manifest", None, "A text file (local or gs://) with one more file pattern per line "
                      "(blank and # lines skipped), read and matched by the workers: for listings too large for "
                      "--inputs.", flag_values=fv)
  flags.DEFINE_boolean("allow_empty_patterns", False, "An --inputs pattern that matches no file becomes a "
                       "missing_file reject instead of a usage error (exit 2).", flag_values=fv)
  flags.DEFINE_string("output_dir", None, "Each run writes runs/<run id>/ here (prediction and reject shards, "
                      "overlays/, summary.json, manifest.json); LATEST names the newest complete run.", flag_values=fv)
  flags.DEFINE_string("metadata_csv", None, "CSV id,male[,chronological_age_months]; wins over DICOM tags.",
                      flag_values=fv)
  flags.DEFINE_boolean("gradcam", False, "Write a Grad-CAM overlay per image (regression head, the image's own sex).",
                       flag_values=fv)
  flags.DEFINE_enum("unknown_sex", patients.UNKNOWN_SEX_REJECT, patients.UNKNOWN_SEX_POLICIES,
                    "Images whose sex neither the CSV nor DICOM gives: reject them (reason unknown_sex), score "
                    "them as both sexes (two rows, sex_source=assumed_both), or as male/female "
                    "(sex_source=assumed).", flag_values=fv)
  flags.DEFINE_integer("batch_size", 0, f"Images per model call; 0: {CPU_BATCH_SIZE}, or "
                       f"{engines.GPU_MIN_BATCH_SIZE} when this machine has a GPU or the Beam options ask for a "
                       "worker accelerator.", lower_bound=0, flag_values=fv)
  flags.DEFINE_enum("engine", "tensorflow", engines.ENGINES,
                    "What runs the model on the workers: tensorflow (XLA on a GPU), openvino (CPU, converted once "
                    "per machine and cached; pip install 'bone-age[openvino]'), or auto: openvino on CPU-only "
                    "workers where it is installed, else tensorflow.", flag_values=fv)
  flags.DEFINE_enum("precision", engines.FLOAT32, engines.PRECISIONS,
                    "float32; bf16 (openvino, CPUs with native BF16); int8 (openvino: the export's model from "
                    "python -m batch_inference.engine_int8 whose accuracy check passed); auto: int8 or bf16 where "
                    "they stay within 0.5 (mean) / 2 (max) months of float32, else float32.", flag_values=fv)
  flags.DEFINE_integer("max_member_bytes", sources.DEFAULT_MAX_MEMBER_BYTES,
                       "Largest image file or archive member read; larger ones are rejected.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("members_per_read", sources.DEFAULT_MEMBERS_PER_READ,
                       "Archive members read together by one worker (one open of the archive per chunk).",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("max_pixels", imaging.DEFAULT_MAX_PIXELS,
                       "Decompression-bomb guard: largest image (H*W) decoded.", lower_bound=1, flag_values=fv)
  flags.DEFINE_enum("quality_gate", quality.DEFAULT_POLICY, quality.POLICIES,
                    "Content gate (bone_age.quality): strict rejects non-hand images and DICOM tags, flag scores "
                    "them with quality_flags, off skips the gate and the hand crop. Degenerate images are rejected "
                    "unless off.", flag_values=fv)
  flags.DEFINE_integer("overlay_max_px", overlays.DEFAULT_OVERLAY_MAX_PX, "Long side of the overlay PNGs.",
                       lower_bound=16, flag_values=fv)
  flags.DEFINE_boolean("dicom_outputs", False, "For each scored DICOM, write a Structured Report and (with "
                       "--gradcam) a Secondary Capture of the overlay into dicom/, both in the source study. They "
                       "carry the patient's identity from the source header.", flag_values=fv)
  flags.DEFINE_string("dicomweb_url", None, "DICOMweb root of a PACS, such as http://host:8042/dicom-web: send the DICOM "
                      "outputs there with STOW-RS (implies --dicom_outputs).", flag_values=fv)
  flags.DEFINE_integer("tta_views", tta.DEFAULT_VIEWS, "Test-time augmentation views averaged per image "
                       "(bone_age.tta: small rotations, scales and shifts, never a flip; each one more forward pass). "
                       "The row's boneage_months is their mean, boneage_tta_sd_months their spread; 1 = off.",
                       lower_bound=1, upper_bound=tta.MAX_VIEWS, flag_values=fv)
  flags.DEFINE_float("interval_alpha", conformal.DEFAULT_ALPHA, "Miscoverage of the split-conformal prediction "
                     "interval in every row (0.1: a 90% interval), from the export's calibration.",
                     lower_bound=1e-6, upper_bound=1 - 1e-6, flag_values=fv)


def _usage_error(message: str) -> None:
  raise cli.UsageError(message)


def parse_args(argv: list[str]) -> tuple[ScoreConfig, list[str]]:
  """Our flags -> ScoreConfig; everything else is returned for Beam, its runner resolved.

  A private FlagValues keeps repeated calls (tests) and other absl programs
  in the same process from clashing over global flag names. Each --inputs
  pattern is probed (one match): one that matches nothing is a usage error
  (exit 2) unless --allow_empty_patterns; one whose probe raises is left to
  the job, which records it as a listing_failed reject. A metadata CSV
  without the id and male columns is a usage error too (ValueError).
  """
  fv = flags.FlagValues()
  _define_flags(fv)
  leftover = cli.parse(_PROG, _USAGE, fv, [_PROG, *argv], _FLAG_GROUPS, required=("model_dir", "output_dir"),
                       extra_args="beam")
  if not fv.inputs and not fv.inputs_manifest:
    _usage_error("--inputs or --inputs_manifest is required: the files or archives to score")
  config = ScoreConfig(
      model_dir=fv.model_dir, inputs=tuple(p.strip() for p in fv.inputs if p.strip()), output_dir=fv.output_dir,
      metadata_csv=fv.metadata_csv, gradcam=fv.gradcam, unknown_sex=fv.unknown_sex, batch_size=fv.batch_size,
      max_member_bytes=fv.max_member_bytes, max_pixels=fv.max_pixels, overlay_max_px=fv.overlay_max_px,
      inputs_manifest=fv.inputs_manifest, allow_empty_patterns=fv.allow_empty_patterns,
      members_per_read=fv.members_per_read, dicom_outputs=fv.dicom_outputs or bool(fv.dicomweb_url),
      dicomweb_url=fv.dicomweb_url, engine=fv.engine, precision=fv.precision,
      quality_gate=fv.quality_gate, tta_views=fv.tta_views, interval_alpha=fv.interval_alpha)
  if config.precision in engines.REDUCED_PRECISIONS and config.engine == "tensorflow":
    _usage_error(f"--precision={config.precision} needs --engine=openvino (or auto); the TensorFlow engine runs float32")
  cli.import_tensorflow_quietly(argv)  # before bone_age.export, which imports it
  resolve_export(config.model_dir)  # a missing model is a usage error, before any run folder is made
  if config.batch_size == 0:
    config = dataclasses.replace(config, batch_size=default_batch_size(leftover))
  if not config.allow_empty_patterns:
    empty = sources.patterns_matching_nothing(config.inputs)
    if empty:
      _usage_error(f"--inputs pattern(s) {', '.join(repr(p) for p in empty)} match no file "
                   "(--allow_empty_patterns records them as missing_file rejects instead)")
  if config.metadata_csv:
    cli.require_path("metadata_csv", config.metadata_csv, "give the CSV of id,male[,chronological_age_months]")
    try:
      patients.read_metadata_header(config.metadata_csv)
    except ValueError as e:
      _usage_error(f"--metadata_csv: {e}")
  if config.dicomweb_url and importlib.util.find_spec("dicomweb_client") is None:
    _usage_error("--dicomweb_url needs dicomweb-client: pip install 'bone-age[dicomweb]'")
  return config, runners.resolve_runner_args(leftover)


def default_batch_size(beam_args: list[str]) -> int:
  """Batch size for --batch_size=0: large on GPUs (here, or asked of the workers), else CPU_BATCH_SIZE."""
  if handler.visible_gpu_count() or any("worker_accelerator" in a for a in beam_args):
    return engines.GPU_MIN_BATCH_SIZE
  return CPU_BATCH_SIZE


def resolve_export(model_dir: str) -> tuple[str, dict]:
  """(export dir, its metadata): model_dir itself or model_dir/export."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  from bone_age import export  # pylint: disable=g-import-not-at-top

  for candidate in (model_dir, FileSystems.join(model_dir, "export")):
    path = FileSystems.join(candidate, export.EXPORT_METADATA_FILE)
    if FileSystems.exists(path):
      with FileSystems.open(path, compression_type="uncompressed") as f:
        return candidate, json.loads(f.read().decode("utf-8"))
  raise cli.UsageError(f"--model_dir={model_dir}: no trained model there ({export.EXPORT_METADATA_FILE} neither "
                       "in it nor in its export/ folder); train one first with boneage-train, or point at its "
                       "export/ folder")


def interval_for_run(export_dir: str, tta_views: int, alpha: float) -> dict:
  """{"half_width_months", "level", ...} of the export's conformal interval for this run, or {"missing_reason"}."""
  calibration = conformal.load(export_dir)
  if calibration is None:
    return {"missing_reason": f"the export has no {conformal.CONFORMAL_SCORES_FILE} (no interval calibration)"}
  try:
    half_width = conformal.half_width_months(calibration, tta_views, alpha)
  except ValueError as e:
    return {"missing_reason": str(e)}
  return {"half_width_months": half_width, "level": round(1.0 - alpha, 6), "alpha": alpha, "tta_views": tta_views,
          "method": conformal.METHOD, "n_calibration": calibration.num_calibration,
          "rank": conformal.finite_sample_rank(calibration.num_calibration, alpha),
          "calibration_split": calibration.split}


def build(pipeline, config: ScoreConfig, export_dir: str, export_metadata: dict, run_dir: str,
          run_started_utc: str | None = None, monitor: progress.ProgressMonitor | None = None) -> dict:
  """Adds the scoring graph and its writers to `pipeline`; every file goes into run_dir.

  With a monitor, every scored row and every reject also passes a progress count (a side branch).

  Returns:
    {"provenance": run provenance, "prediction_interval": the interval used} for the summary.
  """
  group_names = age_groups.group_names(export_metadata["age_group_edges_months"])
  run_info = provenance.run_provenance(export_dir, export_metadata, run_started_utc)
  interval = interval_for_run(export_dir, config.tta_views, config.interval_alpha)
  model = dicom_outputs.model_identity(export_dir, export_metadata, run_info)
  scored = scoring.score_rows(pipeline, config, export_dir, int(export_metadata["image_size_px"]), group_names,
                              run_dir, model_id=model.model_id, run_fields=provenance.row_fields(run_info),
                              interval=interval)
  if config.dicom_outputs:
    rows = scored.rows | "DicomOutputs" >> beam.ParDo(dicom_outputs.WriteDicomOutputsFn(
        run_dir, model, config.dicomweb_url))
    scored = dataclasses.replace(scored, rows=rows)
  writers.write_outputs(scored, run_dir, group_names, config.gradcam)
  if monitor is not None:
    _add_progress_counts(scored, monitor)

  return {"provenance": run_info, "prediction_interval": interval}


def _add_progress_counts(scored: scoring.ScoredRows, monitor: progress.ProgressMonitor) -> None:
  """Counts each input once scored or refused and, when the total is not known up front, the inputs listed."""
  pipeline = scored.rows.pipeline
  items = scored.progress_items
  if items is None:
    items = (scored.rows, *scored.rejects) | "ProgressItems" >> beam.Flatten(pipeline=pipeline)
  _ = items | "Progress" >> progress.CountProgress(monitor.progress_dir, monitor.stage)
  if monitor.counts_listing:
    tallies = tuple(scored.tallies) | "ProgressTallies" >> beam.Flatten(pipeline=pipeline)
    _ = tallies | "ProgressListed" >> progress.CountProgress(monitor.progress_dir, monitor.listed_stage,
                                                             sum_values=True)
    _ = tallies | "ProgressListedFiles" >> progress.CountProgress(monitor.progress_dir, monitor.listed_units_stage)


def listing_plan(config: ScoreConfig) -> tuple[int | None, int | None]:
  """(inputs, listing units) known before the job, from matching the --inputs patterns here.

  inputs: how many inputs the run will read, when every matched file is an image (each one input); None when a
  file may be an archive (its members are counted while the job lists them) or with --inputs_manifest.
  listing units: distinct files matched plus patterns matching none (each gives one tally when listed); None
  with --inputs_manifest or when a pattern cannot be matched here (the job records that as a reject).
  """
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  if config.inputs_manifest:
    return None, None
  paths, matching_none = set(), 0
  for pattern in config.inputs:
    try:
      matched = [m.path for result in FileSystems.match([pattern]) for m in result.metadata_list]
    except Exception:  # pylint: disable=broad-except
      return None, None
    matching_none += not matched  # one missing_file reject
    paths.update(sources.display_name(p) for p in matched)
  units = len(paths) + matching_none
  if all(p.lower().endswith(sources.IMAGE_SUFFIXES) for p in paths):
    return units, units
  return None, units


def nothing_read(summary: dict) -> bool:
  """True when no input could be read at all: every one was unlistable or missing."""
  reasons = set(summary["rejected_by_reason"])
  return summary["scored"] == 0 and summary["rejected"] > 0 and reasons <= _NOTHING_READ_REASONS


def _manifest_files(run: runs.Run, gradcam: bool, dicom: bool = False) -> dict:
  files = {
      "predictions_jsonl": run.shard_files(writers.PREDICTIONS_PREFIX, writers.JSONL_SUFFIX),
      "predictions_csv": run.shard_files(writers.PREDICTIONS_PREFIX, writers.CSV_SUFFIX),
      "rejects_jsonl": run.shard_files(writers.REJECTS_PREFIX, writers.JSONL_SUFFIX),
      "counts": [writers.COUNTS_JSON],
      "started": [runs.STARTED_JSON],
  }
  if gradcam:
    files["overlays_dir"] = [overlays.OVERLAYS_DIR + "/"]
  if dicom:
    files["dicom_dir"] = [dicom_outputs.DICOM_DIR + "/"]
  return files


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
  """Scores the inputs into a new run directory under --output_dir and publishes it; returns the summary.

  The run is published (manifest.json) only after the pipeline has finished
  and its counts are written; a complete run then becomes LATEST. A run that
  could read no input is published with status `nothing_read` and does not
  become LATEST (the console script then exits 1).

  Args:
    argv: Our flags plus Beam options (default: sys.argv[1:]).
    test_pipeline: A TestPipeline to build on instead of a new Pipeline.
  """
  config, beam_args = parse_args(list(sys.argv[1:] if argv is None else argv))
  export_dir, export_metadata = resolve_export(config.model_dir)
  run_ = runs.Run(config.output_dir)
  run_.start(list(config.inputs))
  try:
    pipeline = test_pipeline if test_pipeline is not None else beam.Pipeline(options=PipelineOptions(beam_args))
    total, listing_units = listing_plan(config)
    with progress.ProgressMonitor("scoring", total=total, unit="inputs", enabled=test_pipeline is None,
                                  counts_listing=total is None, listing_units=listing_units) as monitor:
      described = build(pipeline, config, export_dir, export_metadata, run_.path, run_.started_utc, monitor)
      result = pipeline.run()
      result.wait_until_finish()
    summary = {
        **run_.read_json(writers.COUNTS_JSON),
        "age_groups": age_groups.group_names(export_metadata["age_group_edges_months"]),
        "output_dir": run_.path, "export_dir": export_dir, "inputs": list(config.inputs),
        "metadata_csv": config.metadata_csv, "gradcam": config.gradcam, "unknown_sex": config.unknown_sex,
        "image_size_px": int(export_metadata["image_size_px"]), "dicom_outputs": config.dicom_outputs,
        "dicomweb_url": config.dicomweb_url,
        # What was asked for; rows_by_engine (from the rows) says what each worker resolved it to.
        "engine": {"requested": config.engine, "precision": config.precision, "batch_size": config.batch_size},
        "tta_views": config.tta_views,
        "notice": provenance.RESEARCH_USE_NOTICE,
        **described}
    summary["status"] = runs.STATUS_NOTHING_READ if nothing_read(summary) else runs.STATUS_COMPLETE
    run_.publish(summary, _manifest_files(run_, config.gradcam, config.dicom_outputs), summary["status"])
  except BaseException as e:
    run_.mark_failed(e)
    raise
  print(format_summary(summary))
  logging.debug("summary: %s", json.dumps(summary, sort_keys=True))  # the lines above say it in words
  return summary


def format_summary(summary: dict) -> str:
  """The few lines printed at the end of a run."""
  lines = [f"read {summary['read']} = scored {summary['scored']} + rejected {summary['rejected']}"
           + ("" if summary["read_equals_scored_plus_rejected"] else "  (MISMATCH: some inputs are unaccounted for)")]
  for reason, count in summary["rejected_by_reason"].items():
    lines.append(f"  rejected {reason}: {count}")
  for code, count in summary.get("flagged_rows_by_code", {}).items():
    lines.append(f"  scored with quality flag {code}: {count}")
  lines.append(f"sex from: {summary['sex_sources']}; chronological age from: {summary['chronological_age_sources']}")
  for name, what in (("dicom_outputs_by_status", "DICOM SR + SC"),
                     ("dicomweb_by_status", "sent to the PACS (STOW-RS)")):
    if summary.get(name):
      lines.append(f"{what}: {summary[name]} (each row's reason is in its dicom_status / dicomweb_status)")
  if summary.get("scored_per_worker"):
    lines.append(f"images scored per worker: {summary['scored_per_worker']}")
  if summary.get("rows_by_engine"):
    lines.append(f"rows by engine: {summary['rows_by_engine']}")
  interval = summary.get("prediction_interval") or {}
  if interval.get("half_width_months") is not None:
    lines.append(f"{100 * interval['level']:g}% interval: boneage_months +/- {interval['half_width_months']:.1f} months "
                 f"(split conformal, {interval['n_calibration']} calibration images, {summary['tta_views']} TTA views)")
  elif interval:
    lines.append(f"no prediction interval: {interval['missing_reason']}")
  model = summary.get("provenance") or {}
  if model:
    lines.append(f"model {model['model_id']} (experiment {model['experiment']}, step {model['checkpoint_step']} "
                 f"({model['checkpoint_reason']}), dataset {model['dataset']} {model['dataset_version']}), "
                 f"software {model['software_version']}. {model['notice']}")
  lines.append(f"outputs in {summary['output_dir']} (status {summary['status']})")
  return "\n".join(lines)


def main(argv=None) -> None:
  """Console script (argv: a full command line); usage mistakes exit 2 with one line on stderr."""
  args = list(sys.argv if argv is None else argv)[1:]
  cli.quiet_start(args)
  cli.run_main(_PROG, lambda: _main(args), args)


def _main(args: list[str]) -> int:
  summary = run(args)
  if summary["status"] == runs.STATUS_NOTHING_READ:
    print(f"boneage-score: no input could be read ({summary['rejected_by_reason']}); see the rejects in "
          f"{summary['output_dir']}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  main()
