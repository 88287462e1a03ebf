"""Beam's DaskRunner with the three gaps that break a real pipeline closed.

Measured on apache-beam 2.77 (see tests/batch_inference/test_runners.py):
  1. only the last transform's lineage is computed, so a pipeline with more
     than one sink (predictions, rejects, counts) silently skips the others;
  2. a ParDo's tagged outputs are not separated: every consumer of any of its
     outputs receives all of them (rejects would be scored as images);
  3. outputs emitted in `finish_bundle` are dropped, and RunInference's
     BatchElements flushes its last partial batch there (images lost).
This runner keeps Beam's translation and fixes those three points: it keys
bags by (producer, output tag), collects a bundle's outputs after
finish_bundle, and computes every leaf bag. Use it as
`--runner=DaskRunner` with boneage-score (which maps the name here) or as
`--runner=batch_inference.dask_runner.DaskRunner` elsewhere.
"""

from __future__ import annotations

import collections
import functools

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.runners.dask import dask_runner
from apache_beam.runners.dask import transform_evaluator as te
from apache_beam.runners.dask.overrides import dask_overrides


def _apply_dofn_to_bundle(items, fn, window_fn, label, side_inputs, args, kwargs):
  """Runs one bundle (a dask partition) through a DoFn.

  Unlike Beam's version, the outputs are collected after finish_bundle (gap 3)
  and the receivers are created per bundle, so partitions running in threads
  of one worker never share an output list.
  """
  receivers = te.OneReceiver()
  handler = te._OutputHandler(  # pylint: disable=protected-access
      window_fn=window_fn,
      main_receivers=receivers[None],
      tagged_receivers=receivers,
      per_element_output_counter=None,
      output_batch_converter=None,
      process_yields_batches=False,
      process_batch_yields_elements=False)
  invoker = te.DoFnInvoker.create_invoker(
      te.DoFnSignature(fn), handler,
      context=te.DoFnContext(label, state=None),
      side_inputs=side_inputs,
      input_args=list(args),
      input_kwargs=kwargs,
      user_state_context=None,
      bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
  invoker.invoke_setup()
  invoker.invoke_start_bundle()
  for item in items:
    invoker.invoke_process(item)
  invoker.invoke_finish_bundle()
  invoker.invoke_teardown()
  # Main outputs as bare values (what GroupByKey and the next get_windowed_value
  # expect, as in Beam's version); tagged ones keep their tag until the
  # consumer's bag filters them out.
  return [beam.pvalue.TaggedOutput(v.tag, v.value.value) if isinstance(v, beam.pvalue.TaggedOutput) else v.value
          for v in receivers.values]


class _ParDo(te.ParDo):
  """Beam's ParDo op running bundles through the function above."""

  def apply(self, input_bag, side_inputs=None):
    transform = self.transform
    args, kwargs = transform.raw_side_inputs
    main_input = next(iter(self.applied.main_inputs.values()))
    window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
    return input_bag.map(te.get_windowed_value, window_fn).map_partitions(
        _apply_dofn_to_bundle, transform.fn, window_fn, transform.label, side_inputs, args, kwargs)


def _is_tagged(item, tag) -> bool:
  return isinstance(item, beam.pvalue.TaggedOutput) and item.tag == tag


def _is_main(item) -> bool:
  return not isinstance(item, beam.pvalue.TaggedOutput)


def _untag(item):
  return item.value if isinstance(item, beam.pvalue.TaggedOutput) else item


def _output_bag(bag, tag):
  """The part of a ParDo's mixed output bag that belongs to one output (gap 2)."""
  if tag is None:
    return bag.filter(_is_main)
  return bag.filter(functools.partial(_is_tagged, tag=tag)).map(_untag)


_TRANSLATIONS = {**te.TRANSLATIONS, beam.ParDo: _ParDo}


class _Visitor(beam.pipeline.PipelineVisitor):
  """Translates transforms to dask bags, one bag per (producer, output tag)."""

  def __init__(self, bag_kwargs):
    self.bag_kwargs = bag_kwargs
    self.bags = collections.OrderedDict()  # AppliedPTransform -> raw output bag
    self.consumed = set()

  def _input_bag(self, pcoll):
    producer = pcoll.producer
    if producer not in self.bags:
      return None
    self.consumed.add(producer)
    bag = self.bags[producer]
    if isinstance(producer.transform, beam.ParDo) and len(producer.outputs) > 1:
      return _output_bag(bag, pcoll.tag)
    return bag

  def visit_transform(self, transform_node):
    op_class = _TRANSLATIONS.get(transform_node.transform.__class__, te.NoOp)
    op = op_class(transform_node, bag_kwargs=self.bag_kwargs)
    op_kws = {"input_bag": None, "side_inputs": None}
    inputs = list(transform_node.inputs)
    if inputs:
      bag_inputs = []
      for input_value in inputs:
        if isinstance(input_value, pvalue.PBegin):
          bag_inputs.append(None)
          continue
        bag = self._input_bag(input_value)
        if bag is not None:
          bag_inputs.append(bag)
      if len(bag_inputs) == 1 and not isinstance(op, te.Flatten):
        op_kws["input_bag"] = bag_inputs[0]
      else:
        op_kws["input_bag"] = bag_inputs
    side_inputs = list(transform_node.side_inputs)
    if side_inputs:
      op_kws["side_inputs"] = [
          te.SideInputMap(type(si), si._view_options(),  # pylint: disable=protected-access
                          te.DaskBagWindowedIterator(self._input_bag(si.pvalue), si._window_mapping_fn))  # pylint: disable=protected-access
          for si in side_inputs
      ]
    self.bags[transform_node] = op.apply(**op_kws)

  def leaves(self):
    """Bags nothing consumes: computing them computes the whole graph (gap 1)."""
    return [bag for node, bag in self.bags.items() if node not in self.consumed]


class _Result(dask_runner.DaskRunnerResult):
  """Closes the client it opened once the job has finished (or failed)."""

  def wait_until_finish(self, duration=None) -> str:
    try:
      return super().wait_until_finish(duration)
    finally:
      if self.state in (beam.runners.runner.PipelineState.DONE, beam.runners.runner.PipelineState.FAILED):
        self.client.close()


class DaskRunner(dask_runner.DaskRunner):
  """DaskRunner that computes every sink, routes tagged outputs and keeps finish_bundle outputs."""

  def run_pipeline(self, pipeline, options):
    import dask  # pylint: disable=g-import-not-at-top
    import dask.distributed as ddist  # pylint: disable=g-import-not-at-top

    dask_options = options.view_as(dask_runner.DaskOptions).get_all_options(drop_default=True, current_only=True)
    bag_kwargs = dask_runner.DaskOptions._extract_bag_kwargs(dask_options)  # pylint: disable=protected-access
    client = ddist.Client(**dask_options)
    pipeline.replace_all(dask_overrides())
    visitor = _Visitor(bag_kwargs)
    pipeline.visit(visitor)
    leaves = [bag for bag in visitor.leaves() if bag is not None]
    futures = client.compute(list(dask.optimize(*leaves)))
    return _Result(client, futures)
