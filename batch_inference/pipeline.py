"""The scoring graph up to the output rows: inputs -> images -> model -> rows.

`score_rows` adds every step from the input patterns to one row per scored
subject, and hands back the rows together with every rejects and read-tally
PCollection, so the writer (`batch_inference.score`) can account for each
input without knowing how the inputs were found.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.ml.inference import base as ml_base

from beam_pipelines import rejects
from beam_pipelines import transforms
from batch_inference import handler
from batch_inference import records
from batch_inference import sources


@dataclasses.dataclass
class ScoredRows:
  """What the scoring graph produces.

  Attributes:
    rows: One dict per scored subject (records.prediction_row), duplicate ids settled.
    rejects: PCollections of rejects.reject() dicts, one per refused input.
    tallies: PCollections of ints: inputs read per matched file or pattern.
  """
  rows: beam.PCollection
  rejects: list
  tallies: list


def score_rows(pipeline, config, export_dir: str, size_px: int, metadata: dict, group_names: list[str],
               staging_dir: str) -> ScoredRows:
  """Adds the scoring graph to `pipeline` (overlays are written under staging_dir)."""
  model_handler = ml_base.KeyedModelHandler(
      handler.BoneAgeModelHandler(export_dir, batch_size=config.batch_size, gradcam=config.gradcam))

  matched = (pipeline
             | "Patterns" >> beam.Create(list(config.inputs))
             | "MatchPatterns" >> beam.ParDo(sources.MatchPatternsFn()).with_outputs(
                 rejects.REJECTS_TAG, sources.TALLY_TAG, main="files"))
  files = (matched.files
           | "KeyByPath" >> beam.Map(lambda m: (m.path, m))
           # Groups a file matched by two patterns into one, and spreads files over workers.
           | "DistinctFiles" >> beam.GroupByKey()
           | "FirstOfEach" >> beam.Map(lambda kv: list(kv[1])[0])
           | "ReadMatches" >> fileio.ReadMatches())
  inputs = files | "ExpandInputs" >> beam.ParDo(sources.ExpandInputsFn(config.max_member_bytes)).with_outputs(
      rejects.REJECTS_TAG, sources.TALLY_TAG, main="images")
  decoded = inputs.images | "DecodeLetterbox" >> beam.ParDo(transforms.DecodeLetterboxFn(
      size_px, max_pixels=config.max_pixels, keep_original=config.gradcam)).with_outputs(
          rejects.REJECTS_TAG, main="images")
  requests = decoded.images | "PrepareRequests" >> beam.ParDo(records.PrepareRequestFn(
      metadata, config.unknown_sex, config.overlay_max_px if config.gradcam else None)).with_outputs(
          rejects.REJECTS_TAG, main="requests")
  settled = (requests.requests
             | "RunInference" >> ml_base.RunInference(model_handler)
             | "FinishPredictions" >> beam.ParDo(records.FinishPredictionFn(staging_dir, group_names))
             | "KeyById" >> beam.Map(lambda r: (r["id"], r))
             | "GroupById" >> beam.GroupByKey()
             | "SettleDuplicateIds" >> beam.ParDo(records.SettleDuplicateIdsFn()).with_outputs(
                 rejects.REJECTS_TAG, main="rows"))
  return ScoredRows(
      rows=settled.rows,
      rejects=[matched[rejects.REJECTS_TAG], inputs[rejects.REJECTS_TAG], decoded[rejects.REJECTS_TAG],
               requests[rejects.REJECTS_TAG], settled[rejects.REJECTS_TAG]],
      tallies=[matched[sources.TALLY_TAG], inputs[sources.TALLY_TAG]])
