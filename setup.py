"""Packaging for the bone age system.

`pip install '.[cpu]'` (or `gpu`, `tpu`) gives every package and console
script; Dataflow ships the same packages to its workers with
`--setup_file=./setup.py`.
Extras: `test` (pytest), `dask` (DaskRunner on a local or remote cluster),
`gcp` (Dataflow, Vertex AI, GCS), `jax` (the Keras JAX backend used by the GPU
step-rate benchmark), `openvino` (the scorer's fast CPU engine, --engine=openvino),
`onnx` (ONNX Runtime, measured against OpenVINO by benchmarks/bench_engine.py), and exactly one TensorFlow variant: `cpu`, `gpu` (CUDA
wheels) or `tpu` (tensorflow-tpu and libtpu for TPU VMs and Vertex AI TPUs),
e.g. `pip install '.[cpu]'`. The core names no TensorFlow package because the
variants are separate distributions that write the same `tensorflow/` folder.
"""

import setuptools

# TensorFlow and TensorBoard come from exactly one of the cpu/gpu/tpu extras.
INSTALL_REQUIRES = [
    "keras>=3.15,<3.16",
    "tensorflow-datasets>=4.9.10,<4.10",
    "apache-beam>=2.77,<2.78",
    "numpy>=1.26,<3",
    "pandas>=2.2,<4",
    "opencv-python-headless>=4.10",
    "google-cloud-storage>=2.16,<4",
    "absl-py>=2.1,<3",
    "pydicom>=3.0,<4",
    # Compressed DICOM transfer syntaxes (JPEG baseline/lossless, JPEG-LS).
    "pylibjpeg>=2.0,<3",
    "pylibjpeg-libjpeg>=2.1,<3",
    # JPEG decoding that raises on libjpeg's "Corrupt JPEG data" warnings, with
    # cv2's pixels at cv2's speed; every scorer and builder worker decodes JPEGs.
    "simplejpeg>=1.7,<2",
    # Evaluation plots (scatter, Bland-Altman, confusion matrix) and overlays.
    "matplotlib>=3.8,<4",
    # The `tfds` command line imports it (REFERENCE.md 4).
    "mlcroissant>=1.0,<2",
    # TFDS 4.9.10 resolves a builder's code path through it on Python >= 3.9
    # but declares it only for < 3.9 (etils[epath] normally brings it).
    "importlib_resources>=6",
    # DICOM Structured Reports and Secondary Captures of the results.
    "highdicom>=0.28,<0.29",
    # The overlays' text (highdicom needs it too).
    "pillow>=10.1",
]

EXTRAS_REQUIRE = {
    # dill: tfds.testing.DatasetBuilderTestCase imports it; pillow: tests write palette
    # and grey+alpha PNGs, which cv2 cannot.
    # jax: the backend-agnostic model test runs Keras on JAX; scikit-learn: the
    # kappa cross-check; gcp-storage-emulator: a local GCS for the gs:// tests;
    # psutil: per-process CPU and memory of Beam and Dask workers in the scale tests;
    # openvino, nncf: the engine tests compare them (float32, int8) with TensorFlow.
    "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "dill>=0.3", "pillow>=10", "jax>=0.4.30",
             "scikit-learn>=1.4", "gcp-storage-emulator>=2024.8", "psutil>=5.9",
             "dicomweb-client>=0.61,<0.62", "openvino>=2026.4,<2027", "nncf>=3.4,<4"],
    # The scorer's CPU engine (batch_inference/engine_openvino.py) and its int8 quantization with NNCF
    # (batch_inference/engine_int8.py); the default install runs TensorFlow alone.
    "openvino": ["openvino>=2026.4,<2027", "nncf>=3.4,<4"],
    # Only for benchmarks/bench_engine.py's ONNX Runtime comparison.
    "onnx": ["onnxruntime>=1.20", "tf2onnx>=1.16", "onnx>=1.16"],
    "dask": ["apache-beam[dask]>=2.77,<2.78", "distributed>=2024.1"],
    # STOW-RS to a PACS (boneage-score --dicomweb_url); the test extra brings it for the Orthanc test.
    "dicomweb": ["dicomweb-client>=0.61,<0.62"],
    "gcp": ["apache-beam[gcp]>=2.77,<2.78", "google-cloud-aiplatform>=1.60,<2"],
    # The TensorFlow variants. tensorflow-tpu exists only up to the 2.20 line, so the
    # TPU route runs TensorFlow 2.20; each variant pins its own TensorBoard line,
    # which also makes the resolver refuse two variants together (e.g. '.[cpu,tpu]').
    # libtpu is capped at the releases of TensorFlow 2.20's time: later ones drop
    # functions of the TensorFlow TPU C API, and `import tensorflow` then aborts
    # ("ConfigureDistributedTpuOp_DoWork not available in this library").
    "cpu": ["tensorflow>=2.21,<2.22", "tensorboard>=2.21,<2.22"],
    "gpu": ["tensorflow[and-cuda]>=2.21,<2.22", "tensorboard>=2.21,<2.22"],
    "tpu": ["tensorflow-tpu>=2.20,<2.21", "tensorboard>=2.20,<2.21", "libtpu>=0.0.14,<0.0.22"],
}

CONSOLE_SCRIPTS = [
    "boneage-phantoms=bone_age.phantoms:main",
    "boneage-preprocess=beam_pipelines.preprocess:main",
    "boneage-train=trainer.train_main:main",
    "boneage-evaluate=trainer.evaluate_main:main",
    "boneage-score=batch_inference.score:main",
    "boneage-launch=launch.cli:main",
]

setuptools.setup(
    name="bone-age",
    version="0.1.0",
    description="Bone age from pediatric hand radiographs: TFDS data, tf.distribute training, Beam batch scoring.",
    python_requires=">=3.11,<3.13",
    packages=setuptools.find_packages(include=["bone_age*", "beam_pipelines*", "tfds_rsna*", "trainer*", "batch_inference*", "launch*"]),
    package_data={"bone_age": ["data/*.csv", "data/*.md"],
                  "tfds_rsna": ["*/README.md", "*/CITATIONS.bib", "*/checksums.tsv", "*/TAGS.txt"],
                  "launch": ["*.sh", "*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    license="Apache-2.0",
)
