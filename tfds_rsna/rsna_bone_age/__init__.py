"""rsna_bone_age dataset."""
