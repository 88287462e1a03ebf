"""Distribution strategies for `--strategy=default|mirrored|multi_worker|tpu`.

Every strategy is driven by the same custom training loop (train_lib), so
this module only builds the strategy and says which worker we are.
"""

import json
import os

from absl import logging
import tensorflow as tf


def split_host_cpu(num_devices: int) -> None:
  """Splits the host CPU into N logical devices (call before TF runs any op).

  Lets `mirrored` run N replicas on a machine without accelerators, which is
  how the tests exercise the multi-replica code path.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)


def create_strategy(name: str, tpu: str = "") -> tf.distribute.Strategy:
  """The tf.distribute strategy for a `runtime.strategy` name.

  Raises:
    ValueError: for an unknown name.
    RuntimeError: for `tpu` without a reachable TPU (see create_tpu_strategy).
  """
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
      return tf.distribute.MirroredStrategy([d.name for d in gpus])
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    # NCCL needs GPUs; CPU replicas reduce through one device.
    return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      logging.warning("strategy=multi_worker without TF_CONFIG: running as a single worker")
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    return create_tpu_strategy(tpu)
  raise ValueError(f"unknown strategy {name!r}")


def create_tpu_strategy(tpu: str = "") -> tf.distribute.Strategy:
  """TPUClusterResolver -> connect -> initialize_tpu_system -> TPUStrategy.

  Args:
    tpu: TPU name or grpc:// address; "" means the TPU attached to this VM.

  Raises:
    RuntimeError: saying what to do, when no TPU can be resolved (any
      machine without one, e.g. a CPU-only laptop or CI).
  """
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
  except (ValueError, OSError) as e:  # OSError covers URLError from the metadata lookup.
    raise RuntimeError(
        f"strategy=tpu: cannot resolve a TPU ({tpu or 'local'}): {e}. Run on a Cloud TPU VM with the "
        "tensorflow-tpu wheel (pip install '.[tpu]') or pass --tpu=NAME") from e
  tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def task(strategy: tf.distribute.Strategy) -> tuple[str, int]:
  """(task_type, task_id) of this process; ("worker", 0) outside a cluster."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
    return resolver.task_type or "worker", int(resolver.task_id or 0)
  tf_config = json.loads(os.environ.get("TF_CONFIG", "{}")) if isinstance(
      strategy, tf.distribute.MultiWorkerMirroredStrategy) else {}
  task_info = tf_config.get("task", {})
  return task_info.get("type", "worker"), int(task_info.get("index", 0))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """The chief writes checkpoints, summaries and the export; the others only compute.

  With an explicit "chief" task it is that one, otherwise worker 0.
  """
  task_type, task_id = task(strategy)
  return task_type == "chief" or (task_type == "worker" and task_id == 0)


def input_context(strategy: tf.distribute.Strategy) -> tf.distribute.InputContext:
  """Which input pipeline this process runs: one per worker of a MultiWorkerMirrored cluster.

  Workers are numbered as MultiWorkerMirrored numbers them (the chief, if
  any, first), so worker w's replicas are the global replicas
  [w * R / N, (w + 1) * R / N) and its pipeline feeds exactly those. Every
  other strategy has a single pipeline feeding all of its replicas.
  """
  num_pipelines, pipeline_id = 1, 0
  resolver = getattr(strategy, "cluster_resolver", None)
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
    jobs = resolver.cluster_spec().as_dict()
    num_chiefs, num_workers = len(jobs.get("chief", [])), len(jobs.get("worker", []))
    if num_chiefs + num_workers > 1:
      task_type, task_id = task(strategy)
      num_pipelines = num_chiefs + num_workers
      pipeline_id = task_id if task_type == "chief" else num_chiefs + task_id
  return tf.distribute.InputContext(num_input_pipelines=num_pipelines, input_pipeline_id=pipeline_id,
                                    num_replicas_in_sync=strategy.num_replicas_in_sync)
