"""boneage-preprocess: build the TFDS dataset from a manual download with Beam.

  boneage-preprocess --manual_dir=/data/rsna --data_dir=/data/tfds --config=384px \
      --rejects=/data/rejects.jsonl --runner=DirectRunner --direct_num_workers=2 \
      --direct_running_mode=multi_processing

Flags this command does not define are Beam pipeline options (`--runner`,
`--direct_num_workers`, Dataflow's `--project --region --temp_location
--setup_file`, ...): each must be one Beam's option parser knows (a mistyped
flag is a usage error, exit 2), and they are handed to `PipelineOptions`
explicitly, so Beam never parses sys.argv (where absl's flags would collide
with its own).

The dataset code is imported by module name (`--dataset_module`, default
`tfds_rsna`) exactly like `tfds build --imports`, so this package does not
depend on the builder package. The equivalent TFDS command line is
  tfds build rsna_bone_age --imports=tfds_rsna --config=384px --manual_dir=... \
      --data_dir=... --beam_pipeline_options=runner=DirectRunner
"""

import contextlib
import dataclasses
import importlib
import io
import json
import logging
import sys

from absl import flags

from bone_age import cli
from bone_age import quality

_PROG = "boneage-preprocess"
_USAGE = "--manual_dir=DOWNLOAD --data_dir=TFDS_DIR [--config=384px] [flags] [Beam options]"
_FLAG_GROUPS = (
    cli.FlagGroup("Input and output", ("manual_dir", "data_dir", "config", "rejects", "overwrite")),
    cli.FlagGroup("Build", ("quality_gate", "compute_stats", "dataset", "dataset_module")),
)
_FLAGS = flags.FlagValues()
flags.DEFINE_string("manual_dir", None, "Folder holding the label table(s) and images (Kaggle, official RSNA or "
                    "generic layout).", flag_values=_FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data_dir to write the dataset to.", flag_values=_FLAGS)
flags.DEFINE_string("config", "384px", "Builder config (resolution): 128px, 384px or 512px.", flag_values=_FLAGS)
flags.DEFINE_string("rejects", None, "Extra copy of the JSON-lines rejects file (one is always written beside "
                    "the dataset files as rejects.jsonl).", flag_values=_FLAGS)
flags.DEFINE_string("dataset_module", "tfds_rsna", "Module to import so the dataset gets registered.",
                    flag_values=_FLAGS)
flags.DEFINE_string("dataset", "rsna_bone_age", "Registered TFDS dataset name.", flag_values=_FLAGS)
flags.DEFINE_boolean("compute_stats", False, "Compute TFDS feature statistics (one extra pass over the data; the "
                     "trainer does not need them).", flag_values=_FLAGS)
flags.DEFINE_enum("quality_gate", quality.DEFAULT_POLICY, quality.POLICIES,
                  "Content gate (bone_age.quality): strict rejects non-hands, flag lets them through counted, off "
                  "skips the gate and the hand crop. Degenerate images are rejected unless off.", flag_values=_FLAGS)
flags.DEFINE_boolean("overwrite", False, "Rebuild even if the dataset already exists.", flag_values=_FLAGS)


@dataclasses.dataclass
class BuildSummary:
  """What a build read, wrote and refused; `read == written + rejected` when every input is accounted for."""
  dataset_dir: str
  read: int
  written: dict[str, int]
  rejected: dict[str, int]

  @property
  def total_written(self) -> int:
    return sum(self.written.values())

  @property
  def total_rejected(self) -> int:
    return sum(self.rejected.values())

  @property
  def accounted_for(self) -> bool:
    return self.read == self.total_written + self.total_rejected

  def format(self) -> str:
    """Three lines and one per reject reason: the folder, read = written (per split) + rejected, the rejects."""
    verdict = "OK" if self.accounted_for else "MISMATCH: some inputs are unaccounted for"
    splits = ", ".join(f"{split} {n}" for split, n in self.written.items())
    lines = [f"Dataset: {self.dataset_dir}",
             f"  read {self.read} label rows = written {self.total_written} ({splits}) + rejected "
             f"{self.total_rejected} -> {verdict}"]
    lines += [f"  rejected {reason}: {n}" for reason, n in self.rejected.items()]
    if self.rejected:
      lines.append("  every reject, with its reason and detail: rejects.jsonl beside the dataset")
    return "\n".join(lines)


def parse_argv(argv: list[str]) -> list[str]:
  """Parses our flags from argv[1:]; returns the rest (Beam's options, each one Beam knows).

  Raises:
    cli.UsageError: a missing or unknown flag or a bad value.
  """
  return cli.parse(_PROG, _USAGE, _FLAGS, argv, _FLAG_GROUPS, required=("manual_dir", "data_dir"),
                   extra_args="beam")


def summarize(builder) -> BuildSummary:
  """The build summary from a prepared builder's info (works on reuse too)."""
  metadata = builder.info.metadata or {}
  return BuildSummary(
      dataset_dir=str(builder.data_dir),
      read=int(metadata.get("rows_read", 0)),
      written={name: int(split.num_examples) for name, split in builder.info.splits.items()},
      rejected={k: int(v) for k, v in dict(metadata.get("rejected", {})).items()})


def run(argv: list[str], show_progress: bool = False) -> BuildSummary:
  """Builds (or reuses) the dataset; argv is a full command line (argv[0] = program).

  show_progress: print a progress line per split while the job runs (the builder must accept `progress`,
  as tfds_rsna's does).
  """
  beam_args = parse_argv(argv)
  # Checked before the builder exists, so a mistyped folder leaves no partial dataset folder behind.
  cli.require_path("manual_dir", _FLAGS.manual_dir, "point it at the folder holding the label table(s) and images")
  cli.import_tensorflow_quietly(argv)
  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds
  from apache_beam.options.pipeline_options import PipelineOptions
  from beam_pipelines import progress
  from beam_pipelines import runners
  # pylint: enable=g-import-not-at-top

  importlib.import_module(_FLAGS.dataset_module)
  builder_kwargs = {"data_dir": _FLAGS.data_dir}
  if _FLAGS.rejects:
    builder_kwargs["rejects_path"] = _FLAGS.rejects
  if _FLAGS.quality_gate != quality.DEFAULT_POLICY:
    builder_kwargs["quality_gate"] = _FLAGS.quality_gate
  # Dataflow workers cannot reach this machine's progress files: no monitor, and no counting of the label rows.
  show_progress = show_progress and not any(arg.startswith("--runner") and arg.endswith("DataflowRunner")
                                            for arg in beam_args)
  # stream: the console, not the buffer that holds TFDS's own prints below.
  monitor = progress.ProgressMonitor("dataset build", parts=progress.BUILD_PARTS,
                                     enabled=show_progress, stream=sys.stdout)
  if show_progress:
    builder_kwargs["progress"] = monitor
  builder = tfds.builder(f"{_FLAGS.dataset}/{_FLAGS.config}", **builder_kwargs)
  # No runner or DirectRunner: Beam's local runner without its Prism download.
  beam_args = runners.resolve_runner_args(beam_args)
  logging.debug("Beam options: %s", beam_args)
  download_config = tfds.download.DownloadConfig(
      manual_dir=_FLAGS.manual_dir,
      beam_options=PipelineOptions(beam_args),
      compute_stats=(tfds.download.ComputeStatsMode.AUTO if _FLAGS.compute_stats
                     else tfds.download.ComputeStatsMode.SKIP),
      download_mode=(tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if _FLAGS.overwrite
                     else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  verbosity = cli.verbosity_from_argv(argv)
  if verbosity != "debug":
    tfds.disable_progress_bar()  # its bar counts splits, not images, and is full before any image is read
  # TFDS prints "Downloading and preparing dataset Unknown size" and a reuse note for a local build.
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed) if verbosity != "debug" else contextlib.nullcontext(), monitor:
    builder.download_and_prepare(download_config=download_config)
  logging.debug("TFDS: %s", printed.getvalue().strip())
  _copy_rejects_if_reused(builder)
  return summarize(builder)


def _copy_rejects_if_reused(builder) -> None:
  """A reused dataset ran no job: give --rejects the file of the build that made it."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  if not _FLAGS.rejects or epath.Path(_FLAGS.rejects).exists():
    return
  built = epath.Path(builder.data_dir) / "rejects.jsonl"
  if built.exists():
    logging.info("Dataset %s already existed; copying its rejects file to %s", builder.data_dir, _FLAGS.rejects)
    built.copy(_FLAGS.rejects)


def main(argv: list[str] | None = None) -> None:
  """Console-script entry point: prints the summary, exits 1 if inputs went missing, 2 on usage mistakes."""
  argv = list(sys.argv if argv is None else argv)
  cli.quiet_start(argv)
  cli.run_main(_PROG, lambda: _main(argv), argv, user_errors=(ValueError,))


def _main(argv: list[str]) -> int:
  summary = run(argv, show_progress=True)
  print(summary.format())
  logging.debug("summary: %s", json.dumps(dataclasses.asdict(summary), sort_keys=True))
  return 0 if summary.accounted_for else 1


if __name__ == "__main__":
  main()
