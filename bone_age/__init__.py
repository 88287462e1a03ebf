"""Shared core of the bone age system: schema, imaging, model, Grad-CAM, metrics.

Everything above this package (beam_pipelines, tfds_rsna, trainer,
batch_inference) imports from here; this package imports none of them.
Importing `bone_age` itself is cheap: heavy dependencies (TensorFlow, Keras,
pydicom) are imported by the submodules that need them.
"""
