"""boneage-preprocess: build the TFDS dataset from a manual download with Beam.

  boneage-preprocess --manual_dir=/data/rsna --data_dir=/data/tfds --config=384px \
      --rejects=/data/rejects.jsonl --runner=DirectRunner --direct_num_workers=2 \
      --direct_running_mode=multi_processing

Flags this command does not know are Beam pipeline options (`--runner`,
`--direct_num_workers`, Dataflow's `--project --region --temp_location
--setup_file`, ...); they are handed to `PipelineOptions` explicitly, so Beam
never parses sys.argv (where absl's flags would collide with its own).

The dataset code is imported by module name (`--dataset_module`, default
`tfds_rsna`) exactly like `tfds build --imports`, so this package does not
depend on the builder package. The equivalent TFDS command line is
  tfds build rsna_bone_age --imports=tfds_rsna --config=384px --manual_dir=... \
      --data_dir=... --beam_pipeline_options=runner=DirectRunner
"""

import dataclasses
import importlib
import json
import logging
import sys

from absl import flags

from bone_age import quality
from beam_pipelines import runners

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
    lines = [f"Dataset: {self.dataset_dir}", f"  read (label rows):  {self.read}"]
    lines += [f"  written {split + ':':11s} {n}" for split, n in self.written.items()]
    lines.append(f"  written total:      {self.total_written}")
    lines += [f"  rejected {reason}: {n}" for reason, n in self.rejected.items()]
    lines.append(f"  rejected total:     {self.total_rejected} (see rejects.jsonl)")
    verdict = "OK" if self.accounted_for else "MISMATCH: some inputs are unaccounted for"
    lines.append(f"  read = written + rejected: {self.read} = {self.total_written} + {self.total_rejected} "
                 f"-> {verdict}")
    return "\n".join(lines)


def parse_argv(argv: list[str]) -> list[str]:
  """Parses our flags from argv[1:]; returns the rest (Beam's options)."""
  _FLAGS.unparse_flags()
  leftovers = _FLAGS(list(argv), known_only=True)
  for name in ("manual_dir", "data_dir"):
    if not _FLAGS[name].value:
      raise flags.IllegalFlagValueError(f"--{name} is required")
  return leftovers[1:]


def summarize(builder) -> BuildSummary:
  """The build summary from a prepared builder's info (works on reuse too)."""
  metadata = builder.info.metadata or {}
  return BuildSummary(
      dataset_dir=str(builder.data_dir),
      read=int(metadata.get("rows_read", 0)),
      written={name: int(split.num_examples) for name, split in builder.info.splits.items()},
      rejected={k: int(v) for k, v in dict(metadata.get("rejected", {})).items()})


def run(argv: list[str]) -> BuildSummary:
  """Builds (or reuses) the dataset; argv is a full command line (argv[0] = program)."""
  beam_args = parse_argv(argv)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top

  importlib.import_module(_FLAGS.dataset_module)
  builder_kwargs = {"data_dir": _FLAGS.data_dir}
  if _FLAGS.rejects:
    builder_kwargs["rejects_path"] = _FLAGS.rejects
  if _FLAGS.quality_gate != quality.DEFAULT_POLICY:
    builder_kwargs["quality_gate"] = _FLAGS.quality_gate
  builder = tfds.builder(f"{_FLAGS.dataset}/{_FLAGS.config}", **builder_kwargs)
  # No runner or DirectRunner: Beam's local runner without its Prism download.
  beam_args = runners.resolve_runner_args(beam_args)
  logging.info("Beam options: %s", beam_args)
  download_config = tfds.download.DownloadConfig(
      manual_dir=_FLAGS.manual_dir,
      beam_options=PipelineOptions(beam_args),
      compute_stats=(tfds.download.ComputeStatsMode.AUTO if _FLAGS.compute_stats
                     else tfds.download.ComputeStatsMode.SKIP),
      download_mode=(tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if _FLAGS.overwrite
                     else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  builder.download_and_prepare(download_config=download_config)
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
  """Console-script entry point: prints the summary, exits 1 if inputs went missing."""
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  # Beam relays every worker log line at INFO; keep the build summary readable.
  logging.getLogger("apache_beam").setLevel(logging.WARNING)
  try:
    summary = run(sys.argv if argv is None else argv)
  except (flags.Error, ValueError) as e:
    print(f"boneage-preprocess: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(summary.format())
  print(json.dumps(dataclasses.asdict(summary), sort_keys=True))
  sys.exit(0 if summary.accounted_for else 1)


if __name__ == "__main__":
  main()
