"""Beam's DaskRunner, fixed so that a pipeline distributes and runs each step once.

Beam 2.77's DaskRunner translates every transform into a dask bag, and
  1. computes only the last transform's lineage, so a pipeline with more than
     one sink (predictions, rejects, counts) silently skips the others;
  2. does not separate a ParDo's tagged outputs: every consumer of any of its
     outputs receives all of them;
  3. drops what `finish_bundle` emits (RunInference flushes its last partial
     batch there);
  4. makes `Reshuffle` a no-op and keeps the input's partition count through
     `GroupByKey`: a pipeline that starts from one file stays one partition,
     on one worker, however many elements it fans out to;
  5. sets up every DoFn anew for each partition (RunInference reloads its
     model), and collects a partition's whole output in a list;
  6. reads a side input by computing its bag again inside each task.

This runner keeps Beam's translation of Create and Flatten and replaces the
rest. `Reshuffle`, `GroupByKey` and side inputs are stage boundaries: every
PCollection a later transform reads is persisted on the cluster first, in
one computation (so nothing upstream runs twice), the input is counted, and
it is cut into partitions of at most `--dask_partition_size` elements (at
least `--dask_npartitions` partitions, by default four per worker thread):
by position for a Reshuffle, dealt round-robin over the workers' threads;
by a hash of the key's deterministic Beam encoding for a GroupByKey (counted
and split once per worker, where its partitions lie) into several buckets
per partition, the buckets packed largest first into the emptiest partition
and the partitions dealt the same way to the least loaded thread (loose
restrictions: dask may still move work to an idle worker). Between
boundaries, ParDos are read-once streams that dask fuses into one task per
partition, so elements flow through them one by one; each worker process
keeps its set-up DoFn instances for the next partition and tears them down
when the job ends; a worker process started with glibc's malloc thresholds
pinned (Dask's nanny does so) gets them unpinned before its first DoFn runs.
A partition is a list only where several tasks read it
(a ParDo with several outputs or consumers) and at a boundary; the partition
size bounds both. Every task costs the worker CPU of its own, so partitions
are large by default, and a shuffle's output (or a Flatten of computed
PCollections) is read by later stages where it lies, with no task to copy it. Bounded reads (`ReadFromText`) and `Impulse` are
translated too. Use it as `--runner=DaskRunner` through
`beam_pipelines.runners`, or as `--runner=beam_pipelines.dask_runner.DaskRunner`.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import math
import os
import threading
import uuid
import zlib

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import coders
from apache_beam.internal import pickler
from apache_beam.runners.dask import dask_runner
from apache_beam.runners.dask import overrides
from apache_beam.runners.dask import transform_evaluator as te

DEFAULT_PARTITION_SIZE = 64
_READ_BUNDLE_BYTES = 64 << 20  # a bounded source (ReadFromText) is split into bundles of about this size
_PARTITIONS_PER_THREAD = 4
# A GroupByKey hashes keys into this many buckets per output partition and packs
# them: few keys with many values each (an archive's read chunks) still fill
# the partitions evenly.
_BUCKETS_PER_PARTITION = 4

# glibc mallopt parameters, and the largest values glibc's own dynamic thresholds reach on 64-bit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 << 20
_TRIM_THRESHOLD_BYTES = 2 * _MMAP_THRESHOLD_BYTES
_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_malloc_checked = False

# Set-up DoFn instances of this worker process, by ParDo token, idle ones only:
# a partition takes one (or sets up a new one) and puts it back when done.
_IDLE_DOFNS: dict[str, list] = collections.defaultdict(list)
_IDLE_LOCK = threading.Lock()


def _unpin_malloc_thresholds() -> bool:
  """Lets freed image-sized buffers be reused instead of unmapped, once per worker process.

  Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_ set (to hand freed
  memory back to the OS). Any such variable turns off glibc's dynamic mmap
  threshold, so every buffer above 128 KiB (each decoded radiograph, its
  letterboxed copy, every NumPy and TensorFlow temporary of that size) is a
  fresh mmap that the kernel zero-fills page by page, and an munmap when
  freed. Per image that is more CPU than the arithmetic on it. Setting the
  thresholds to the values glibc's dynamic rule grows to keeps such buffers
  in the heap; at most the trim threshold of free memory per arena stays
  mapped. A process started without those variables keeps glibc's own
  behaviour, and a libc without mallopt is left alone. Returns whether the
  thresholds were set.
  """
  global _malloc_checked
  with _IDLE_LOCK:
    if _malloc_checked:
      return False
    _malloc_checked = True
  if not any(name in os.environ for name in _MALLOC_ENV):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(
      mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))


def _take_dofn(token: str, fn_pickled: bytes):
  _unpin_malloc_thresholds()
  with _IDLE_LOCK:
    if _IDLE_DOFNS[token]:
      return _IDLE_DOFNS[token].pop(), False
  fn = pickler.loads(fn_pickled)
  return (fn, te.DoFnSignature(fn)), True


def _release_dofns(tokens: list[str]) -> int:
  """Tears down and forgets this process's idle DoFns of a finished job; returns how many."""
  with _IDLE_LOCK:
    idle = [entry for token in tokens for entry in _IDLE_DOFNS.pop(token, [])]
  for fn, _ in idle:
    try:
      fn.teardown()
    except Exception:  # pylint: disable=broad-except
      pass  # the job has finished; a failing teardown must not fail it now
  return len(idle)


def _drain(values: list):
  """Yields and forgets a bundle's outputs so far (main bare, tagged with their tag)."""
  out = list(values)
  del values[:]
  for v in out:
    if isinstance(v, beam.pvalue.TaggedOutput):
      yield beam.pvalue.TaggedOutput(v.tag, v.value.value)
    else:
      yield v.value


class _Stream:
  """A ParDo's lazy partition: read once where it was made, or turned into a list to travel.

  Dask fuses a chain of ParDos into one task, where this streams. Where the
  scheduler still keeps a partition as a task result and sends it to another
  worker, pickling reads the rest of it into a list. Reading it twice in
  place would silently give the second reader nothing, so it raises.
  """

  def __init__(self, elements):
    self._elements = elements
    self._started = False

  def __iter__(self):
    if self._started:
      raise RuntimeError("a streamed Dask partition was read twice")
    self._started = True
    return iter(self._elements)

  def __reduce__(self):
    return list, (list(iter(self)),)


def _stream_bundle(items, *args):
  return _Stream(_run_bundle(items, *args))


def _run_bundle(items, token, fn_pickled, window_fn, label, side_inputs, args, kwargs):
  """Runs one partition through a DoFn, yielding outputs as each element produces them.

  Outputs of `finish_bundle` are kept (gap 3). A DoFn instance whose bundle
  failed is torn down and never reused.
  """
  (fn, signature), fresh = _take_dofn(token, fn_pickled)
  receivers = te.OneReceiver()
  handler = te._OutputHandler(  # pylint: disable=protected-access
      window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
      per_element_output_counter=None, output_batch_converter=None,
      process_yields_batches=False, process_batch_yields_elements=False)
  invoker = te.DoFnInvoker.create_invoker(
      signature, handler, context=te.DoFnContext(label, state=None), side_inputs=side_inputs,
      input_args=list(args), input_kwargs=kwargs, user_state_context=None,
      bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
  finished = False
  try:
    if fresh:
      invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
      invoker.invoke_process(te.get_windowed_value(item, window_fn))
      yield from _drain(receivers.values)
    invoker.invoke_finish_bundle()
    yield from _drain(receivers.values)
    finished = True
  finally:
    if finished:
      with _IDLE_LOCK:
        _IDLE_DOFNS[token].append((fn, signature))
    else:
      try:
        invoker.invoke_teardown()
      except Exception:  # pylint: disable=broad-except
        pass  # the bundle's own error is the one to report


def _as_list(part) -> list:
  """Ends a chain of fused generators where the partition is read by more than one task."""
  return part if isinstance(part, list) else list(part)


def _own_partitions(part, node_token: str) -> list:  # pylint: disable=unused-argument
  """A Create's partitions under keys of its own: dask names a bag by its content, and two
  Creates of the same values (Beam's `[None]` DoOnce in every write) would share keys."""
  return _as_list(part)


def _drain_sink(part) -> list:
  """Runs a sink's partition to the end; only its element count leaves the worker."""
  return [sum(1 for _ in part)]


def _read_splits(splits):
  """Reads a partition of a bounded source's splits, element by element."""
  for split in splits:
    tracker = split.source.get_range_tracker(split.start_position, split.stop_position)
    yield from split.source.read(tracker)


def _is_tagged(item, tag) -> bool:
  return isinstance(item, beam.pvalue.TaggedOutput) and item.tag == tag


def _is_main(item) -> bool:
  return not isinstance(item, beam.pvalue.TaggedOutput)


def _untag(item):
  return item.value


def _take_slices(pieces, *parts):
  """One output partition: the concatenation of parts[i][start:stop] for (i, start, stop) in pieces."""
  out = []
  for index, start, stop in pieces:
    out.extend(parts[index][start:stop])
  return out


_KEY_CODER = coders.FastPrimitivesCoder().as_deterministic_coder("GroupByKey")


def _num_elements(*parts) -> int:
  return sum(len(part) for part in parts)


def _split_by_key(num_buckets: int, *parts):
  """Elements (key, value) of parts -> num_buckets lists of (encoded key, key, value), by a stable hash.

  Python's hash() differs between worker processes; the deterministic Beam
  encoding of the key does not, and keys are compared by it as Beam does.
  """
  buckets = [[] for _ in range(num_buckets)]
  for part in parts:
    for key, value in part:
      encoded = _KEY_CODER.encode(key)
      buckets[zlib.crc32(encoded) % num_buckets].append((encoded, key, value))
  return buckets


def _bucket_sizes(buckets) -> list[int]:
  return [len(b) for b in buckets]


def _bucket(buckets, index: int):
  return buckets[index]


def _group_bucket(*buckets):
  """Buckets from every input partition -> [(key, [values])], grouped by encoded key."""
  groups = {}
  for bucket in buckets:
    for encoded, key, value in bucket:
      groups.setdefault(encoded, (key, []))[1].append(te.defenestrate(value))
  return list(groups.values())


def _largest_first(sizes: list[int], num_bins: int) -> list[tuple[int, int]]:
  """(item, bin) for each non-empty item: largest first, to the least loaded of num_bins bins."""
  loads = [0] * num_bins
  dealt = []
  for j in sorted((j for j, n in enumerate(sizes) if n), key=lambda j: -sizes[j]):
    slot = min(range(num_bins), key=lambda k: loads[k])
    loads[slot] += sizes[j]
    dealt.append((j, slot))
  return sorted(dealt)


class _ListIterator:
  """A side input's values, computed once on the cluster and shipped with each task."""

  def __init__(self, values, window_fn):
    self._values = values
    self._window_fn = window_fn

  def __iter__(self):
    for value in self._values:
      yield te.get_windowed_value(value, self._window_fn)


def _consumers(pipeline) -> dict:
  """PCollection -> the leaf transforms reading it (as main or side input)."""
  found = collections.defaultdict(set)

  class _Consumers(beam.pipeline.PipelineVisitor):

    def visit_transform(self, node):
      for pcoll in list(node.inputs) + [si.pvalue for si in node.side_inputs]:
        if not isinstance(pcoll, pvalue.PBegin):
          found[pcoll].add(node)

  pipeline.visit(_Consumers())
  return found


class _Visitor(beam.pipeline.PipelineVisitor):
  """Translates leaf transforms into dask bags, one bag per producer, persisting at stage boundaries."""

  def __init__(self, client, bag_kwargs, consumers, partition_size: int, min_partitions: int):
    self.client = client
    self.bag_kwargs = bag_kwargs
    self.consumers = consumers
    self.partition_size = partition_size
    self.min_partitions = min_partitions
    self.bags = collections.OrderedDict()  # AppliedPTransform -> raw output bag
    self.pcoll_bags = {}  # PCollection -> its persisted bag, once a stage boundary has passed
    # Bag name -> the futures holding its partitions (lists), in order: bags
    # computed already, which are read as they are instead of copied by a task.
    self.computed = {}
    self.visited = set()
    self.persisted_sinks = set()
    # Futures the graph names by key only (from_delayed keeps no Future): held
    # until the job has finished, or the scheduler would forget them.
    self.held = []
    self.dofn_tokens = []  # one per ParDo: its set-up instances are torn down when the job ends
    nthreads = client.nthreads()  # worker address -> threads
    self.slots = [w for w, n in sorted(nthreads.items()) for _ in range(n)]

  # -- stage boundaries -------------------------------------------------------------------------

  def _checkpoint(self):
    """Persists, in one computation, every PCollection still to be read and every sink so far.

    Persisting per PCollection rather than per producer keeps only the
    outputs that later stages read (a multi-output ParDo's rejects, not its
    images), and computing them together runs each shared producer once.
    """
    pcolls = [pcoll for node in self.bags for pcoll in node.outputs.values()
              if pcoll not in self.pcoll_bags and self.consumers.get(pcoll, set()) - self.visited]
    sinks = [node for node in self.bags if node not in self.persisted_sinks and self._is_sink(node)]
    todo = []
    for pcoll in pcolls:
      bag = self._input_bag(pcoll)
      if bag is None:
        continue
      if bag.name in self.computed:
        self.pcoll_bags[pcoll] = bag  # a shuffle's output, or a Flatten of computed bags: nothing to run
      else:
        todo.append((pcoll, bag.map_partitions(_as_list)))
    todo += [(node, self._sink_bag(node)) for node in sinks]
    if not todo:
      return
    persisted = self.client.persist([bag for _, bag in todo])
    for (what, _), bag in zip(todo, persisted):
      if isinstance(what, pvalue.PCollection):
        self.pcoll_bags[what] = bag
        self.computed[bag.name] = self._partition_futures(bag)
      else:
        self.bags[what] = bag
        self.persisted_sinks.add(what)

  def _num_readers(self, node) -> int:
    return sum(len(self.consumers.get(p, ())) for p in node.outputs.values())

  def _is_sink(self, node) -> bool:
    return self.bags.get(node) is not None and not self._num_readers(node)

  def _sink_bag(self, node):
    bag = self.bags[node]
    return bag if node in self.persisted_sinks else bag.map_partitions(_drain_sink)

  def _partition_futures(self, bag) -> list:
    import distributed  # pylint: disable=g-import-not-at-top

    if bag.name in self.computed:
      return self.computed[bag.name]
    by_key = {f.key: f for f in distributed.futures_of(bag)}
    return [by_key[k] for k in bag.__dask_keys__()]

  def _num_partitions(self, num_elements: int) -> int:
    return max(1, math.ceil(num_elements / self.partition_size), min(num_elements, self.min_partitions))

  def _placed(self, index: int) -> dict:
    """Restriction spreading output partition `index` round-robin over worker threads (loose)."""
    if not self.slots:
      return {}
    return {"workers": [self.slots[index % len(self.slots)]], "allow_other_workers": True}

  def _empty(self):
    import dask.bag as db  # pylint: disable=g-import-not-at-top

    return db.from_sequence([], npartitions=1)

  def _computed_bag(self, name: str, futures: list):
    """A bag whose partitions are `futures` (lists, keyed (name, index)): read where they lie, no task of its own."""
    import dask.bag as db  # pylint: disable=g-import-not-at-top
    from dask.highlevelgraph import HighLevelGraph  # pylint: disable=g-import-not-at-top

    self.held.extend(futures)
    self.computed[name] = list(futures)
    graph = HighLevelGraph.from_collections(name, {(name, i): f for i, f in enumerate(futures)}, dependencies=())
    return db.Bag(graph, name, len(futures))

  def _flatten(self, bags):
    """Beam's Flatten; of computed bags, a computed bag (its partitions are theirs, nothing runs)."""
    import dask.bag as db  # pylint: disable=g-import-not-at-top

    flat = db.concat(bags)
    if bags and all(b.name in self.computed for b in bags):
      self.computed[flat.name] = [f for b in bags for f in self.computed[b.name]]
    return flat

  def reshuffle(self, bag, label: str):
    """A persisted bag -> a bag of evenly filled partitions of bounded size, spread over workers."""
    parts = self._partition_futures(bag)
    counts = self.client.gather(self.client.map(len, parts, pure=False))
    total = sum(counts)
    if not total:
      return self._empty()
    num_out = self._num_partitions(total)
    starts = [0]
    for count in counts:
      starts.append(starts[-1] + count)
    name = f"reshuffle-{label}-{uuid.uuid4().hex}"
    outs = []
    for j in range(num_out):
      lo, hi = j * total // num_out, (j + 1) * total // num_out
      pieces, deps = [], []
      for i, count in enumerate(counts):
        s, e = max(lo, starts[i]), min(hi, starts[i] + count)
        if s < e:
          pieces.append((len(deps), s - starts[i], e - starts[i]))
          deps.append(parts[i])
      outs.append(self.client.submit(_take_slices, pieces, *deps, key=(name, j), **self._placed(j)))
    return self._computed_bag(name, outs)

  def group_by_key(self, bag, label: str):
    """A persisted bag of (key, value) -> (key, [values]) partitions, by key hash, balanced over workers.

    Keys are hashed into several buckets per output partition; the non-empty
    buckets are packed largest first into the emptiest partition, and the
    partitions dealt the same way to the least loaded worker thread, so a
    handful of keys (an archive's read chunks) still splits evenly.
    """
    parts_by_worker = self._by_worker(self._partition_futures(bag))
    # Counted and split where the partitions lie, one task per worker: per input
    # partition, the (partition, bucket) pieces would grow with partitions x buckets.
    token = uuid.uuid4().hex
    totals = [self.client.submit(_num_elements, *parts, key=f"count-{label}-{i}-{token}", **placed)
              for i, (placed, parts) in enumerate(parts_by_worker)]
    total = sum(self.client.gather(totals))
    if not total:
      return self._empty()
    num_out = self._num_partitions(total)
    num_buckets = _BUCKETS_PER_PARTITION * num_out
    split = [self.client.submit(_split_by_key, num_buckets, *parts, key=f"split-{label}-{i}-{token}", **placed)
             for i, (placed, parts) in enumerate(parts_by_worker)]
    per_split = self.client.gather(self.client.map(_bucket_sizes, split))  # [worker's split][bucket] -> count
    sizes = [sum(per_part) for per_part in zip(*per_split)]
    packed = collections.defaultdict(list)  # output partition -> its buckets
    for j, out in _largest_first(sizes, num_out):
      packed[out].append(j)
    packed = list(packed.values())
    name = f"group-{label}-{token}"
    outs = []
    for p, slot in _largest_first([sum(sizes[j] for j in js) for js in packed], max(1, len(self.slots))):
      # Only the (split, bucket) pieces that hold elements become tasks.
      buckets = [self.client.submit(_bucket, s, j, key=f"bucket-{label}-{i}-{j}-{token}")
                 for j in packed[p] for i, s in enumerate(split) if per_split[i][j]]
      outs.append(self.client.submit(_group_bucket, *buckets, key=(name, len(outs)), **self._placed(slot)))
    return self._computed_bag(name, outs)

  def _by_worker(self, parts: list) -> list[tuple[dict, list]]:
    """Persisted partitions grouped by the worker holding them, with a (loose) restriction to that worker."""
    import distributed  # pylint: disable=g-import-not-at-top

    distributed.wait(parts)
    holders = self.client.who_has(parts)
    grouped = collections.defaultdict(list)
    for part in parts:
      grouped[min(holders.get(part.key) or [""])].append(part)
    return [({"workers": [worker], "allow_other_workers": True} if worker else {}, grouped[worker])
            for worker in sorted(grouped)]

  # -- translation --------------------------------------------------------------------------------

  def _input_bag(self, pcoll):
    if pcoll in self.pcoll_bags:
      return self.pcoll_bags[pcoll]
    producer = pcoll.producer
    bag = self.bags.get(producer)
    if bag is None:
      return None
    if isinstance(producer.transform, beam.ParDo) and len(producer.outputs) > 1:
      # The part of a multi-output ParDo's bag that belongs to one output (gap 2).
      if pcoll.tag is None:
        return bag.filter(_is_main)
      return bag.filter(functools.partial(_is_tagged, tag=pcoll.tag)).map(_untag)
    return bag

  def _side_input(self, si):
    bag = self._input_bag(si.pvalue)
    values = list(self.client.gather(self.client.compute(bag))) if bag is not None else []
    return te.SideInputMap(type(si), si._view_options(),  # pylint: disable=protected-access
                           _ListIterator(values, si._window_mapping_fn))  # pylint: disable=protected-access

  def _own(self, bag):
    return bag.map_partitions(_own_partitions, uuid.uuid4().hex)

  @staticmethod
  def _from_sequence(items):
    import dask.bag as db  # pylint: disable=g-import-not-at-top

    return db.from_sequence(items, partition_size=1)

  def _read(self, source):
    """beam.io.Read of a bounded source (what ReadFromText expands to): one partition per split."""
    splits = list(source.split(desired_bundle_size=_READ_BUNDLE_BYTES))
    if not splits:
      return self._empty()
    return self._own(self._from_sequence(splits)).map_partitions(_read_splits)

  def _pardo(self, node, input_bag, side_inputs):
    transform = node.transform
    args, kwargs = transform.raw_side_inputs
    main_input = next(iter(node.main_inputs.values()))
    window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
    token = uuid.uuid4().hex
    self.dofn_tokens.append(token)
    # Windowing inside the bundle: a bag.map() between ParDos would make each partition a list again.
    return input_bag.map_partitions(
        _stream_bundle, token, pickler.dumps(transform.fn), window_fn, transform.label, side_inputs,
        args, kwargs)

  def visit_transform(self, transform_node):
    transform = transform_node.transform
    boundary = isinstance(transform, (overrides._Reshuffle, overrides._GroupByKeyOnly))  # pylint: disable=protected-access
    if boundary or transform_node.side_inputs:
      self._checkpoint()
    inputs = [self._input_bag(i) for i in transform_node.inputs if not isinstance(i, pvalue.PBegin)]
    inputs = [b for b in inputs if b is not None]
    if isinstance(transform, overrides._Reshuffle):  # pylint: disable=protected-access
      bag = self.reshuffle(inputs[0], transform_node.full_label)
    elif isinstance(transform, overrides._Read):  # pylint: disable=protected-access
      bag = self._read(transform.source)
    elif isinstance(transform, beam.Impulse):
      bag = self._own(self._from_sequence([b""]))
    elif isinstance(transform, overrides._GroupByKeyOnly):  # pylint: disable=protected-access
      bag = self.group_by_key(inputs[0], transform_node.full_label)
    elif transform.__class__ is beam.ParDo:  # not _GroupAlsoByWindow: a no-op here, as in Beam's runner
      side_inputs = [self._side_input(si) for si in transform_node.side_inputs] or None
      bag = self._pardo(transform_node, inputs[0], side_inputs)
    else:
      op = te.TRANSLATIONS.get(transform.__class__, te.NoOp)(transform_node, bag_kwargs=self.bag_kwargs)
      if isinstance(op, te.Flatten):
        bag = self._flatten(inputs)
      else:
        bag = op.apply(inputs[0] if inputs else None)
      if isinstance(op, te.Create):
        bag = self._own(bag)
    if bag is not None and bag.name not in self.computed and self._num_readers(transform_node) > 1:
      # A generator can be read once: a partition that several tasks read is a list.
      bag = bag.map_partitions(_as_list)
    self.bags[transform_node] = bag
    self.visited.add(transform_node)

  def sinks(self):
    """Bags nothing consumes: computing them computes the rest of the graph (gap 1)."""
    return [self._sink_bag(node) for node in self.bags if self._is_sink(node)]


class _Result(dask_runner.DaskRunnerResult):
  """Closes the client it opened once the job has finished (or failed)."""

  def __init__(self, client, futures, held=(), dofn_tokens=()):
    super().__init__(client, futures)
    self._held = list(held)
    self._dofn_tokens = list(dofn_tokens)

  def wait_until_finish(self, duration=None) -> str:
    try:
      return super().wait_until_finish(duration)
    finally:
      if self.state in (beam.runners.runner.PipelineState.DONE, beam.runners.runner.PipelineState.FAILED):
        self._held = []
        try:
          # Long-lived workers would otherwise keep every finished job's DoFns (and models).
          self.client.run(_release_dofns, self._dofn_tokens)
        finally:
          self.client.close()


class DaskRunner(dask_runner.DaskRunner):
  """DaskRunner that distributes at Reshuffle/GroupByKey, streams ParDos and computes every sink once."""

  def run_pipeline(self, pipeline, options):
    import dask.distributed as ddist  # pylint: disable=g-import-not-at-top

    dask_options = options.view_as(dask_runner.DaskOptions).get_all_options(drop_default=True, current_only=True)
    bag_kwargs = dask_runner.DaskOptions._extract_bag_kwargs(dask_options)  # pylint: disable=protected-access
    client = ddist.Client(**dask_options)
    try:
      pipeline.replace_all(overrides.dask_overrides())
      threads = sum(client.nthreads().values())
      visitor = _Visitor(client, bag_kwargs, _consumers(pipeline),
                         partition_size=bag_kwargs.get("partition_size") or DEFAULT_PARTITION_SIZE,
                         min_partitions=bag_kwargs.get("npartitions") or max(1, _PARTITIONS_PER_THREAD * threads))
      pipeline.visit(visitor)
      futures = client.compute(visitor.sinks())
    except BaseException:
      client.close()
      raise
    return _Result(client, futures, visitor.held + list(visitor.pcoll_bags.values()), visitor.dofn_tokens)
