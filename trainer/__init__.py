"""Training: typed configs, named experiments, tf.data input, a custom
distributed training loop with exact resume, TensorBoard summaries, export.

`boneage-train` (trainer.train_main) is the entry point; `train_lib` holds the
loop. Evaluation on the held-out test split lives in `trainer.evaluate*`.
"""
