"""strategy=tpu: the code path up to the TPU runtime (no TPU here)."""

import pytest
import tensorflow as tf

from trainer import distribution


def test_without_a_tpu_the_resolver_error_says_what_to_do():
  with pytest.raises(RuntimeError, match="cannot resolve a TPU.*tensorflow-tpu"):
    distribution.create_strategy("tpu", tpu="")


def test_tpu_path_resolves_connects_initializes_then_builds_tpu_strategy(monkeypatch):
  calls = []

  class FakeResolver:
    def __init__(self, tpu=None):
      calls.append(("resolve", tpu))

  monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", FakeResolver)
  monkeypatch.setattr(tf.config, "experimental_connect_to_cluster",
                      lambda resolver: calls.append(("connect", type(resolver).__name__)))
  monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system",
                      lambda resolver: calls.append(("initialize", type(resolver).__name__)))
  monkeypatch.setattr(tf.distribute, "TPUStrategy", lambda resolver: calls.append(("strategy", type(resolver).__name__))
                      or "tpu-strategy")
  assert distribution.create_strategy("tpu", tpu="my-tpu") == "tpu-strategy"
  assert calls == [("resolve", "my-tpu"), ("connect", "FakeResolver"), ("initialize", "FakeResolver"),
                   ("strategy", "FakeResolver")]


def test_unknown_strategy_is_rejected():
  with pytest.raises(ValueError, match="unknown strategy"):
    distribution.create_strategy("horovod")
