"""The builder's job graph holds paths, not label rows: its size does not grow with the tables."""

import apache_beam as beam
import tensorflow_datasets as tfds

from tfds_rsna.rsna_bone_age import rsna_bone_age_dataset_builder

MAX_GRAPH_BYTES = 1 << 20  # far under Dataflow's 20 MB job-request limit


def _graph_bytes(manual_dir, data_dir) -> int:
  """Builds (never runs) the builder's pipeline over `manual_dir` and returns its serialized size."""
  builder = rsna_bone_age_dataset_builder.Builder(config="128px", data_dir=str(data_dir))
  dl_manager = tfds.download.DownloadManager(download_dir=str(data_dir / "downloads"), manual_dir=str(manual_dir),
                                             manual_dir_instructions=builder.MANUAL_DOWNLOAD_INSTRUCTIONS)
  pipeline = beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"]))
  split_transforms = builder._split_generators(dl_manager, pipeline)  # pylint: disable=protected-access
  for split, transform in split_transforms.items():
    _ = pipeline | f"Select{split}" >> transform
  return len(pipeline.to_runner_api().SerializeToString())


def _generic_dir(root, num_rows: int):
  (root / "images").mkdir(parents=True)
  with open(root / "labels.csv", "w", encoding="utf-8") as f:
    f.write("id,boneage,male\n")
    f.writelines(f"{100000 + i},{6 + i % 220},{'True' if i % 2 else 'False'}\n" for i in range(num_rows))
  return root


def test_graph_under_1_mb_with_a_million_label_rows_and_independent_of_table_size(tmp_path):
  big = _graph_bytes(_generic_dir(tmp_path / "big", 1_000_000), tmp_path / "out_big")
  small = _graph_bytes(_generic_dir(tmp_path / "small", 10), tmp_path / "out_small")
  assert big < MAX_GRAPH_BYTES, big
  # Only the paths differ between the two graphs, never the rows.
  assert abs(big - small) < 1024, (big, small)
