"""Training throughput: the full trainer vs a bare Keras loop, and the input pipeline alone.

Measured in ONE process on the same phantom dataset (demo_cpu: 128 px, tiny
backbone, global batch 32, float32, default strategy):
  1. bare:     model.train_on_batch over one in-memory batch (no input
               pipeline, no checkpoints, no logging) - the ceiling;
  2. trainer:  trainer.train_lib's loop (tf.data, custom step, batch log off),
               steady state after the first logging window;
  3. pipeline: trainer.input_pipeline.train_dataset alone (decode + augment).
  4. xception: bare train_on_batch of the production backbone at the same
               size (batch 8), and the full trainer with that backbone, for
               the ratios on the real recipe.
  5. loop:     the tiny model's trainer step rate with train.steps_per_loop
               1 (a run of its own) vs 20 (run 2): the per-call host
               overhead that many steps per tf.function call removes.
Targets: trainer >= 95% of bare; pipeline >= 20x the model's consumption
(reported against both the tiny demo model and Xception). On a CPU the tiny
model's input pipeline (decode + augmentation) competes with it for the same
cores, while the bare loop reuses one in-memory batch; Xception, the
production model, leaves the pipeline a small share of the CPU.

  python benchmarks/bench_train.py [--steps=160] [--output=bench_output/train.json]
"""

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from bone_age import model as model_lib  # pylint: disable=wrong-import-position
from trainer import experiments  # pylint: disable=wrong-import-position
from trainer import input_pipeline as ip  # pylint: disable=wrong-import-position
from trainer import train_lib  # pylint: disable=wrong-import-position

SIZE_PX = 128


def _phantom_tfds():
  spec = importlib.util.spec_from_file_location("phantom_tfds", REPO_ROOT / "tests" / "trainer" / "phantom_tfds.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def bare_images_per_second(config, facts, batch, steps: int, warmup: int, backbone: str | None = None) -> float:
  keras.utils.set_random_seed(config.train.seed)
  model = model_lib.build_model(image_size_px=facts.image_size_px, age_group_edges_months=facts.age_group_edges_months,
                                backbone=backbone or config.model.backbone, weights=None, dropout_image=config.model.dropout_image,
                                dropout_fusion=config.model.dropout_fusion)
  model.compile(keras.optimizers.Adam(config.optimizer.learning_rate),
                loss={model_lib.AGE_OUTPUT: "mae", model_lib.GROUP_OUTPUT: "sparse_categorical_crossentropy"},
                loss_weights={model_lib.AGE_OUTPUT: config.loss.age_mae_weight / 240.0,
                              model_lib.GROUP_OUTPUT: config.loss.group_ce_weight}, jit_compile=False)
  x = {model_lib.IMAGE_INPUT: batch[ip.IMAGE], model_lib.MALE_INPUT: batch[ip.MALE][:, None]}
  y = {model_lib.AGE_OUTPUT: batch[ip.BONEAGE], model_lib.GROUP_OUTPUT: batch[ip.GROUP]}
  for _ in range(warmup):
    model.train_on_batch(x, y)
  start = time.perf_counter()
  for _ in range(steps):
    model.train_on_batch(x, y)
  return steps * len(batch[ip.BONEAGE]) / (time.perf_counter() - start)


def pipeline_images_per_second(builder, config, batches: int) -> float:
  dataset = ip.train_dataset(builder, config, SIZE_PX)
  iterator = iter(dataset)
  for _ in range(5):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * config.data.per_replica_batch_size / (time.perf_counter() - start)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=160)
  parser.add_argument("--num_train", type=int, default=256)
  parser.add_argument("--output", default=str(REPO_ROOT / "bench_output" / "train.json"))
  args = parser.parse_args(argv)

  work = pathlib.Path(tempfile.mkdtemp(prefix="bench_train_"))
  _phantom_tfds().build(str(work / "data"), size_px=SIZE_PX, num_train=args.num_train, num_validation=32,
                        num_test=8, render_hw=(260, 200))
  warmup = 20
  overrides = [f"train.train_steps={warmup + args.steps}", f"train.log_every_steps={warmup}",
               f"train.eval_every_steps={warmup + args.steps}", "train.num_gradcam_images=0"]
  config = experiments.resolve("demo_cpu", overrides + ["train.steps_per_loop=20"])
  builder = ip.load_builder(str(work / "data"), config.data)
  facts = ip.dataset_facts(builder, config.data)
  batch = {k: v.numpy() for k, v in next(iter(ip.train_dataset(builder, config, SIZE_PX))).items()}

  # Bare runs before and after the trainer: the machine is shared, so report both and compare with their mean.
  bare = bare_images_per_second(config, facts, batch, args.steps, warmup)
  result = train_lib.train_and_evaluate(config, str(work / "data"), str(work / "run"))
  trainer = result.steady_images_per_second
  one_step_config = experiments.resolve("demo_cpu", overrides + ["train.steps_per_loop=1"])
  per_loop = {1: train_lib.train_and_evaluate(one_step_config, str(work / "data"),
                                              str(work / "run_loop1")).steady_images_per_second,
              20: trainer}
  bare_again = bare_images_per_second(config, facts, batch, args.steps, warmup)
  pipeline = pipeline_images_per_second(builder, config, batches=60)
  # The production backbone's appetite at the same size: what the pipeline must feed on a real run.
  small = {k: v[:8] for k, v in batch.items()}
  xception_steps, xception_warmup = 24, 4  # ~200 images: fewer made the ratio swing by +-0.1
  xception = bare_images_per_second(config, facts, small, steps=xception_steps, warmup=xception_warmup,
                                    backbone="xception")
  xception_config = experiments.resolve("demo_cpu", [
      "model.backbone=xception", "model.weights=none", "data.global_batch_size=8",
      f"train.train_steps={xception_warmup + xception_steps}", f"train.log_every_steps={xception_warmup}",
      f"train.eval_every_steps={xception_warmup + xception_steps}", "train.num_gradcam_images=0",
      "data.max_validation_examples=8"])
  xception_trainer = train_lib.train_and_evaluate(xception_config, str(work / "data"),
                                                  str(work / "run_xception")).steady_images_per_second

  numbers = {
      "config": "demo_cpu (128 px, tiny backbone, global batch 32, float32, default strategy)",
      "steps_timed": args.steps,
      "bare_train_on_batch_images_per_second": [round(bare, 1), round(bare_again, 1)],
      "trainer_images_per_second": round(trainer, 1),
      "trainer_vs_bare": round(trainer / ((bare + bare_again) / 2), 3),
      "trainer_vs_bare_target": 0.95,
      "input_pipeline_images_per_second": round(pipeline, 1),
      "pipeline_vs_trainer": round(pipeline / trainer, 1),
      "pipeline_vs_trainer_target": 20.0,
      "xception_train_on_batch_images_per_second": round(xception, 1),
      "pipeline_vs_xception": round(pipeline / xception, 1),
      "xception_trainer_images_per_second": round(xception_trainer, 2),
      "xception_trainer_vs_bare": round(xception_trainer / xception, 3),
      "xception_trainer_vs_bare_target": 0.95,
      "tiny_steps_per_second_steps_per_loop_1": round(per_loop[1] / config.data.per_replica_batch_size, 1),
      "tiny_steps_per_second_steps_per_loop_20": round(per_loop[20] / config.data.per_replica_batch_size, 1),
      "steps_per_loop_20_vs_1": round(per_loop[20] / per_loop[1], 3),
      "cpu_count": os.cpu_count(),
      "load_average_1min": round(os.getloadavg()[0], 2),
  }
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as f:
    json.dump(numbers, f, indent=2)
  print(json.dumps(numbers, indent=2))
  return numbers


if __name__ == "__main__":
  main()
