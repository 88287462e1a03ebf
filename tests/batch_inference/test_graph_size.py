"""The job graph does not grow with the metadata CSV (Dataflow refuses requests over 20 MB)."""

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from bone_age import age_groups
from batch_inference import pipeline as scoring
from batch_inference import score

MAX_GRAPH_BYTES = 1024 * 1024
NUM_CSV_ROWS = 1_000_000


def test_a_million_row_metadata_csv_keeps_the_serialized_pipeline_under_1_mb(tiny_export, make, tmp_path):
  (tmp_path / "one.png").write_bytes(make.png(make.pixels(1)))
  csv_path = tmp_path / "metadata.csv"
  with open(csv_path, "w") as f:
    f.write("id,male,chronological_age_months\n")
    f.writelines(f"{i},{'M' if i % 2 else 'F'},{i % 240}\n" for i in range(NUM_CSV_ROWS))
  assert csv_path.stat().st_size > 20 * 1024 * 1024 // 2  # a table the old pickled dict made ~26 MiB of graph from
  config, _ = score.parse_args([f"--model_dir={tiny_export}", f"--inputs={tmp_path / 'one.png'}",
                                f"--output_dir={tmp_path / 'out'}", f"--metadata_csv={csv_path}"])
  export_dir, export_metadata = score.resolve_export(config.model_dir)
  p = beam.Pipeline(options=PipelineOptions([]))
  scoring.score_rows(p, config, export_dir, int(export_metadata["image_size_px"]),
                     age_groups.group_names(export_metadata["age_group_edges_months"]), str(tmp_path / "run"))
  graph_bytes = len(p.to_runner_api().SerializeToString())
  assert graph_bytes < MAX_GRAPH_BYTES, f"{graph_bytes} bytes of job graph"
