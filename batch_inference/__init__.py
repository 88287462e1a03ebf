"""Batch scoring of hand radiographs with Apache Beam (`boneage-score`)."""
