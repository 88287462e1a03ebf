"""What a reader finds in TensorBoard, read with TensorBoard's own event loading.

A short demo_cpu run: the scalars form `train/` and `validation/` groups, the
HParams session leads with the key hyperparameters and takes its metrics from
validation, and every evaluation logs captioned Grad-CAM images of both sexes.
"""

import pytest
from tensorboard.backend.event_processing import event_multiplexer
from tensorboard.plugins.hparams import metadata as hparams_metadata

from trainer import experiments
from trainer import summaries
from trainer import train_lib

NUM_GRADCAM_IMAGES = 4


@pytest.fixture(scope="module")
def run_logs(phantom_data_dir, tmp_path_factory, trainer_helpers):
  config = experiments.resolve("demo_cpu", list(trainer_helpers.SMALL_OVERRIDES) + [
      "train.train_steps=6", "train.eval_every_steps=3", f"train.num_gradcam_images={NUM_GRADCAM_IMAGES}"])
  model_dir = tmp_path_factory.mktemp("tensorboard_run")
  train_lib.train_and_evaluate(config, str(phantom_data_dir), str(model_dir))
  multiplexer = event_multiplexer.EventMultiplexer()
  multiplexer.AddRunsFromDirectory(str(model_dir / "logs"))
  multiplexer.Reload()
  return multiplexer


def _tags(multiplexer, run: str) -> set:
  tags = multiplexer.Runs()[run]
  return set(tags["tensors"]) | set(tags.get("scalars", []))


def test_scalars_are_grouped_by_run(run_logs):
  train_tags, validation_tags = _tags(run_logs, "train"), _tags(run_logs, "validation")
  assert {"train/mae_months", "train/loss", "train/learning_rate"} <= train_tags
  assert {"validation/mae_months", "validation/qwk", "validation/r2", "validation/best_mae_months"} <= validation_tags
  assert all(t.startswith("train/") for t in train_tags), train_tags
  assert all(t.startswith("validation/") for t in validation_tags), validation_tags
  assert len(run_logs.Tensors("validation", "validation/mae_months")) == 2  # one point per evaluation


def test_hparams_lead_with_key_fields_and_measure_validation(run_logs):
  experiment = hparams_metadata.parse_experiment_plugin_data(
      run_logs.SummaryMetadata(".", hparams_metadata.EXPERIMENT_TAG).plugin_data.content)
  names = [h.name for h in experiment.hparam_infos]
  assert names[:len(summaries.KEY_HPARAMS)] == list(summaries.KEY_HPARAMS)
  assert not any(n.startswith("augment.") and n not in ("augment.rotation_max_deg", "augment.zoom_max_fraction",
                                                        "augment.brightness_max_delta", "augment.contrast_max_fraction")
                 for n in names)
  assert len(names) < 30, names  # the key fields and what the experiment changed, not every config field
  metrics = [(m.name.group, m.name.tag) for m in experiment.metric_infos]
  assert ("validation", "validation/best_mae_months") in metrics and ("validation", "validation/qwk") in metrics
  assert all(group == "validation" for group, _ in metrics)
  session = hparams_metadata.parse_session_start_info_plugin_data(
      run_logs.SummaryMetadata(".", hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content)
  assert session.hparams["model.backbone"].string_value == "tiny"


def test_each_evaluation_shows_captioned_gradcam_of_both_sexes(run_logs):
  events = run_logs.Tensors("validation", summaries.GRADCAM_TAG)
  assert len(events) == 2
  for event in events:
    # An image summary holds width, height, then one encoded image per output.
    assert len(event.tensor_proto.string_val) - 2 == NUM_GRADCAM_IMAGES
  description = run_logs.SummaryMetadata("validation", summaries.GRADCAM_TAG).summary_description
  assert "girl:" in description and "boy:" in description
  assert description.count("true ") == NUM_GRADCAM_IMAGES and description.count("predicted ") == NUM_GRADCAM_IMAGES
