"""The scoring graph up to the output rows: inputs -> images -> model -> rows.

`score_rows` adds every step from the input patterns to one row per scored
subject, and hands back the rows together with every rejects and read-tally
PCollection, so the writers can account for each input without knowing how
the inputs were found.

Where the work spreads over workers (each arrow with a shuffle):

  patterns (--inputs, --inputs_manifest lines) -> match on workers
    => distinct files -> list each file (zip central directory, tar headers,
       a compressed tar streamed) into small member references
    => references joined with the metadata CSV by id (and by file stem)
    => references grouped into read chunks of consecutive members of one file
       -> read by byte range -> decode + letterbox -> RunInference -> rows
    => rows grouped by id (duplicate ids settled)

so one archive's members are read, decoded and scored by many workers, and
only references and metadata rows (not image bytes) cross the first two
shuffles (a compressed tar's members are the exception: they cannot be read
by offset, so their bytes travel with their references).
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam import coders
from apache_beam.ml.inference import base as ml_base

from beam_pipelines import rejects
from beam_pipelines import transforms
from bone_age import provenance
from batch_inference import handler
from batch_inference import patients
from batch_inference import records
from batch_inference import sources


@dataclasses.dataclass
class ScoredRows:
  """What the scoring graph produces.

  Attributes:
    rows: One dict per scored subject (records.prediction_row), duplicate ids settled.
    rejects: PCollections of rejects.reject() dicts, one per refused input.
    tallies: PCollections of ints: inputs read per matched file or pattern.
    worker_tallies: (worker id, images scored) pairs, one per worker process
      that ran the model (images later rejected as duplicate_id included).
    progress_items: One element per input as soon as it is scored or refused,
      before duplicate ids are settled (a GroupByKey that holds every row
      until the model is done): what a progress count follows.
  """
  rows: beam.PCollection
  rejects: list
  tallies: list
  worker_tallies: beam.PCollection
  progress_items: beam.PCollection | None = None


class DecodeWithMetadataFn(transforms.DecodeLetterboxFn):
  """((id, source, bytes), row) -> (PreparedImage, row, sha256 of the bytes): the shared decoder, the metadata row
  and the input's hash (provenance: which file was scored) carried beside."""

  def process(self, element):
    item, row = element
    digest = provenance.bytes_sha256(item[2])
    for out in super().process(item):
      yield out if isinstance(out, beam.pvalue.TaggedOutput) else (out, row, digest)


def _patterns(pipeline, config):
  """--inputs patterns and --inputs_manifest lines as one PCollection of patterns."""
  listed = pipeline | "Patterns" >> beam.Create(list(config.inputs))
  if not config.inputs_manifest:
    return listed
  from_manifest = (pipeline
                   | "ReadManifest" >> beam.io.ReadFromText(config.inputs_manifest, coder=coders.BytesCoder())
                   | "ManifestPatterns" >> beam.FlatMap(
                       lambda line: [p for p in [sources.pattern_from_manifest_line(line)] if p is not None]))
  return (listed, from_manifest) | "AllPatterns" >> beam.Flatten()


def _first_file(element):
  _, refs = element
  return min(refs, key=lambda r: r.path)


def score_rows(pipeline, config, export_dir: str, size_px: int, group_names: list[str], run_dir: str,
               metadata_fields: list[str] | None = None, model_id: str | None = None,
               run_fields: dict | None = None, interval: dict | None = None) -> ScoredRows:
  """Adds the scoring graph to `pipeline` (overlays are written under run_dir).

  Args:
    pipeline: The Beam pipeline.
    config: batch_inference.score.ScoreConfig.
    export_dir: The model export.
    size_px: The model's image size.
    group_names: Age-group names.
    run_dir: Where overlays go.
    metadata_fields: The metadata CSV's columns (patients.read_metadata_header),
      read from its header when not given.
    model_id: The model's id, written on the overlays.
    run_fields: Run-level provenance copied into every row (bone_age.provenance.row_fields).
    interval: {"half_width_months", "level"} of the export's conformal interval
      for this run's TTA views and alpha, or {"missing_reason"}.
  """
  model_handler = ml_base.KeyedModelHandler(
      handler.BoneAgeModelHandler(export_dir, batch_size=config.batch_size, gradcam=config.gradcam,
                                  engine=config.engine, precision=config.precision,
                                  tta_views=getattr(config, "tta_views", 1)))
  if config.metadata_csv and metadata_fields is None:
    metadata_fields = patients.read_metadata_header(config.metadata_csv)

  matched = (_patterns(pipeline, config)
             | "SpreadPatterns" >> beam.Reshuffle()
             | "MatchPatterns" >> beam.ParDo(sources.MatchPatternsFn()).with_outputs(
                 rejects.REJECTS_TAG, sources.TALLY_TAG, main="files"))
  listed = (matched.files
            | "KeyByPath" >> beam.Map(lambda f: (sources.display_name(f.path), f))
            # Groups a file matched by two patterns into one, and spreads files over workers.
            | "DistinctFiles" >> beam.GroupByKey()
            | "FirstOfEach" >> beam.Map(_first_file)
            | "ListMembers" >> beam.ParDo(sources.ListMembersFn(
                config.max_member_bytes, config.members_per_read)).with_outputs(
                    rejects.REJECTS_TAG, sources.TALLY_TAG, main="refs"))
  joined, join_rejects = listed.refs | "JoinMetadata" >> patients.JoinMetadata(config.metadata_csv, metadata_fields)
  read = (joined
          | "KeyByChunk" >> beam.Map(lambda ref_row: (ref_row[0].chunk_key, ref_row))
          # Each chunk (consecutive members of one file) goes to any worker.
          | "GroupIntoChunks" >> beam.GroupByKey()
          | "ReadMembers" >> beam.ParDo(sources.ReadMembersFn(config.max_member_bytes)).with_outputs(
              rejects.REJECTS_TAG, main="images"))
  decoded = read.images | "DecodeLetterbox" >> beam.ParDo(DecodeWithMetadataFn(
      size_px, max_pixels=config.max_pixels, keep_original=config.gradcam, quality_gate=config.quality_gate)).with_outputs(
          rejects.REJECTS_TAG, main="images")
  requests = decoded.images | "PrepareRequests" >> beam.ParDo(records.PrepareRequestFn(
      config.unknown_sex, config.overlay_max_px if config.gradcam else None)).with_outputs(
          rejects.REJECTS_TAG, main="requests")
  finished = (requests.requests
              | "RunInference" >> ml_base.RunInference(model_handler)
              | "FinishPredictions" >> beam.ParDo(records.FinishPredictionFn(
                  run_dir, group_names, model_id, export_dir, run_fields, interval)).with_outputs(
                      records.WORKER_TALLY_TAG, main="rows"))
  settled = (finished.rows
             | "KeyRowsById" >> beam.Map(lambda r: (r["id"], r))
             | "GroupRowsById" >> beam.GroupByKey()
             | "SettleDuplicateIds" >> beam.ParDo(records.SettleDuplicateIdsFn()).with_outputs(
                 rejects.REJECTS_TAG, main="rows"))
  worker_tallies = finished[records.WORKER_TALLY_TAG] | "ImagesPerWorker" >> beam.CombinePerKey(sum)
  refused_before_the_model = [matched[rejects.REJECTS_TAG], listed[rejects.REJECTS_TAG], join_rejects,
                              read[rejects.REJECTS_TAG], decoded[rejects.REJECTS_TAG], requests[rejects.REJECTS_TAG]]
  # One worker tally per scored image (the second subject under --unknown_sex=both has none).
  progress_items = ((finished[records.WORKER_TALLY_TAG], *refused_before_the_model)
                    | "ProgressItems" >> beam.Flatten())
  return ScoredRows(
      rows=settled.rows,
      rejects=[*refused_before_the_model, settled[rejects.REJECTS_TAG]],
      tallies=[matched[sources.TALLY_TAG], listed[sources.TALLY_TAG]],
      worker_tallies=worker_tallies, progress_items=progress_items)
