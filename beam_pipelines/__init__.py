"""Apache Beam transforms shared by the dataset builder and the batch scorer.

Each module holds picklable, module-level DoFns and PTransforms with one job:
`rejects` (bad inputs become JSON-lines records and counters, never crashes),
`transforms` (bytes -> letterboxed radiograph), `labels` (label tables ->
validated rows), `examples` (labeled images -> TFDS examples) and the
`preprocess` command that builds the TFDS dataset. This package imports only
`bone_age`; the dataset module is imported by name at run time.
"""
