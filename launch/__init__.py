"""Launchers for the real workloads: Dataflow, Vertex AI, TPU VMs, TensorBoard.

Every launcher is a pure function that returns the exact command (a list of
argv strings) or job spec (a dict), so it can be reviewed with `--dry_run` and
asserted on in tests before any cloud money is spent. `launch.cli` is the
`boneage-launch` console script that prints or runs them.

This package talks to the rest of the project only through its console
scripts (boneage-preprocess, boneage-train, boneage-score): it imports none of
beam_pipelines, tfds_rsna, trainer or batch_inference, so launching stays
cheap and works on a laptop without TensorFlow.
"""
