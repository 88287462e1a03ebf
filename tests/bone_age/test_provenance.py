"""bone_age.provenance: the model's hash, and what an export says about its weights."""

import hashlib

from bone_age import export
from bone_age import model as ba_model
from bone_age import provenance


def test_model_id_is_the_sha256_of_the_weights_file_and_old_exports_read_as_last(tmp_path):
  model = ba_model.build_model(image_size_px=32, age_group_edges_months=[113.0, 150.0], backbone="tiny", weights=None)
  export.save_export(model, str(tmp_path), {"backbone": "tiny", "dataset_version": "1.0.0", "train_steps": 40})
  sha = hashlib.sha256((tmp_path / "model.keras").read_bytes()).hexdigest()
  assert provenance.model_sha256(str(tmp_path)) == sha
  run = provenance.run_provenance(str(tmp_path), export.read_metadata(str(tmp_path)), "2026-12-02T15:00:00+00:00")
  assert run["model_id"] == sha[:12] and run["model_sha256"] == sha
  # Written before checkpoint_step / checkpoint_reason existed: such exports held the final weights.
  assert (run["checkpoint_step"], run["checkpoint_reason"]) == (40, "last") and "predates" in run["checkpoint_reason_note"]
  assert run["dataset"] == "rsna_bone_age" and run["notice"] == "Research use only, not a medical device."
  assert list(provenance.row_fields(run)) == list(provenance.ROW_FIELDS)
  assert provenance.row_fields(run)["run_started_utc"] == "2026-12-02T15:00:00+00:00"
  explicit = provenance.run_provenance(str(tmp_path), {"checkpoint_step": 7, "checkpoint_reason": "best_validation",
                                                       "dataset_name": "other"}, None)
  assert (explicit["checkpoint_step"], explicit["checkpoint_reason"], explicit["dataset"]) == (
      7, "best_validation", "other") and "checkpoint_reason_note" not in explicit
  assert provenance.bytes_sha256(b"abc") == hashlib.sha256(b"abc").hexdigest()
