"""beam_pipelines.dask_runner on a local cluster of two worker processes.

Every DoFn here records each call as a file created exclusively (`open(.., "x")`),
named by element and worker pid: a second call for one element fails the
pipeline, and the files tell which process did the work.
"""

import collections
import os
import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipelines import dask_runner

distributed = pytest.importorskip("distributed")

NUM_ELEMENTS = 200
MAX_BUSIEST_SHARE = 0.65


@pytest.fixture(scope="module")
def cluster():
  with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
    yield c


def _options(cluster, *extra):
  return PipelineOptions([f"--dask_client_address={cluster.scheduler_address}", *extra])


class _RecordFn(beam.DoFn):
  """Records (element, pid) as a file per call; odd numbers also go to the 'odd' output."""

  def __init__(self, folder: str, tagged: bool = False):
    self._folder = folder
    self._tagged = tagged

  def process(self, element):
    with open(os.path.join(self._folder, f"{element}.{os.getpid()}"), "x", encoding="utf-8"):
      pass
    if self._tagged and element % 2:
      yield beam.pvalue.TaggedOutput("odd", element)
    else:
      yield element


def _calls(folder):
  """[(element, pid)] from the files _RecordFn and _write left."""
  return [tuple(int(p) for p in name.split(".")) for name in os.listdir(folder)]


def _write(folder: str, element):
  with open(os.path.join(folder, f"{element}.{os.getpid()}"), "x", encoding="utf-8"):
    pass


def _folders(tmp_path, *names):
  for name in names:
    (tmp_path / name).mkdir()
  return [str(tmp_path / name) for name in names]


def test_reshuffle_spreads_one_partition_over_both_workers(cluster, tmp_path):
  (calls,) = _folders(tmp_path, "calls")
  with beam.Pipeline(runner=dask_runner.DaskRunner(), options=_options(cluster)) as p:
    _ = (p
         | beam.Create(["one archive"])  # one input element fans out, as one archive does
         | beam.FlatMap(lambda _: range(NUM_ELEMENTS))
         | beam.Reshuffle()
         | beam.ParDo(_RecordFn(calls)))
  done = _calls(calls)
  assert sorted(e for e, _ in done) == list(range(NUM_ELEMENTS))
  per_pid = collections.Counter(pid for _, pid in done)
  worker_pids = set(cluster.scheduler_info["workers"][w]["pid"] for w in cluster.scheduler_info["workers"]) \
      if all("pid" in v for v in cluster.scheduler_info["workers"].values()) else set(per_pid)
  assert set(per_pid) <= worker_pids and os.getpid() not in per_pid
  assert len(per_pid) == 2, per_pid
  assert max(per_pid.values()) <= MAX_BUSIEST_SHARE * NUM_ELEMENTS, per_pid


def test_tagged_outputs_and_several_sinks_each_element_processed_once(cluster, tmp_path):
  calls, evens, evens_again, odds, groups = _folders(tmp_path, "calls", "evens", "evens_again", "odds", "groups")
  with beam.Pipeline(runner=dask_runner.DaskRunner(), options=_options(cluster)) as p:
    split = (p
             | beam.Create(list(range(NUM_ELEMENTS)))
             | beam.Reshuffle()
             | beam.ParDo(_RecordFn(calls, tagged=True)).with_outputs("odd", main="even"))
    _ = split.even | "WriteEvens" >> beam.Map(lambda x, d=evens: _write(d, x))
    _ = split.even | "Times10" >> beam.Map(lambda x: x * 10) | "WriteEvens10" >> beam.Map(
        lambda x, d=evens_again: _write(d, x))
    _ = split.odd | "WriteOdds" >> beam.Map(lambda x, d=odds: _write(d, x))
    _ = (split.even
         | beam.Map(lambda x: (x % 3, x))
         | beam.GroupByKey()
         | beam.Map(lambda kv, d=groups: _write(d, kv[0] * 10**6 + sum(kv[1]))))
  assert sorted(e for e, _ in _calls(calls)) == list(range(NUM_ELEMENTS))  # each exactly once
  evens_want = list(range(0, NUM_ELEMENTS, 2))
  assert sorted(e for e, _ in _calls(evens)) == evens_want
  assert sorted(e for e, _ in _calls(evens_again)) == [10 * x for x in evens_want]
  assert sorted(e for e, _ in _calls(odds)) == list(range(1, NUM_ELEMENTS, 2))
  want_groups = sorted(k * 10**6 + sum(x for x in evens_want if x % 3 == k) for k in range(3))
  assert sorted(e for e, _ in _calls(groups)) == want_groups


def test_finish_bundle_outputs_and_empty_reshuffle(cluster, tmp_path):
  (out,) = _folders(tmp_path, "out")

  class _Batch(beam.DoFn):

    def start_bundle(self):
      self._seen = []

    def process(self, element):
      self._seen.append(element)
      if len(self._seen) == 3:
        yield sum(self._seen)
        self._seen = []

    def finish_bundle(self):
      if self._seen:
        yield beam.transforms.window.GlobalWindows.windowed_value(sum(self._seen))

  with beam.Pipeline(runner=dask_runner.DaskRunner(), options=_options(cluster)) as p:
    nums = p | beam.Create(list(range(1, 41))) | beam.Reshuffle()
    _ = nums | beam.ParDo(_Batch()) | beam.CombineGlobally(sum) | beam.Map(lambda s, d=out: _write(d, s))
    _ = nums | beam.Filter(lambda x: x > 100) | "Nothing" >> beam.Reshuffle() | beam.Map(
        lambda x, d=out: _write(d, -x))
  assert [e for e, _ in _calls(out)] == [sum(range(1, 41))]


class _BundleSizeFn(beam.DoFn):
  """Records each bundle's size as a file named <bundle id>.<size>."""

  def __init__(self, folder: str):
    self._folder = folder

  def start_bundle(self):
    self._size = 0

  def process(self, element):
    self._size += 1
    yield element

  def finish_bundle(self):
    import uuid  # pylint: disable=g-import-not-at-top
    with open(os.path.join(self._folder, f"{uuid.uuid4().int % 10**9}.{self._size}"), "x", encoding="utf-8"):
      pass


def test_partitions_after_a_reshuffle_are_bounded(cluster, tmp_path):
  (bundles,) = _folders(tmp_path, "bundles")
  with beam.Pipeline(runner=dask_runner.DaskRunner(), options=_options(cluster, "--dask_partition_size=10")) as p:
    _ = (p
         | beam.Create(["one archive"])
         | beam.FlatMap(lambda _: range(NUM_ELEMENTS))
         | beam.Reshuffle()
         | beam.ParDo(_BundleSizeFn(bundles)))
  sizes = [size for _, size in _calls(bundles)]
  assert sum(sizes) == NUM_ELEMENTS and max(sizes) <= 10 and len(sizes) == NUM_ELEMENTS // 10


def _fail_on_13(x):
  if x == 13:
    raise ValueError("element 13 is bad")
  return x


def test_a_failing_dofn_fails_the_job_with_its_error(cluster, tmp_path):
  with pytest.raises(ValueError, match="element 13 is bad"):
    with beam.Pipeline(runner=dask_runner.DaskRunner(), options=_options(cluster)) as p:
      _ = p | beam.Create(list(range(20))) | beam.Reshuffle() | beam.Map(_fail_on_13)


@pytest.fixture(scope="module")
def cluster_of_two_hash_seeds():
  """Two workers whose str hash() differs, as `dask worker --no-nanny` on two machines.

  (A nanny gives every worker the same PYTHONHASHSEED.)
  """
  with distributed.LocalCluster(n_workers=0, dashboard_address=None) as c:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", c.scheduler_address,
                                 "--no-nanny", "--nthreads=1", "--no-dashboard"],
                                env={**env, "PYTHONHASHSEED": seed}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for seed in ("1", "2")]
    try:
      with distributed.Client(c) as client:
        client.wait_for_workers(2, timeout=60)
        assert len(set(client.run(hash, "a key").values())) == 2
      yield c
    finally:
      for worker in workers:
        worker.terminate()
        worker.wait(30)


def test_group_by_key_groups_equal_keys_from_different_workers(cluster_of_two_hash_seeds, tmp_path):
  """Keys are compared by their deterministic encoding, not by a per-process hash()."""
  (out,) = _folders(tmp_path, "out")
  pairs = [(("id", i % 7, "x" * (i % 7)), i) for i in range(NUM_ELEMENTS)]
  with beam.Pipeline(runner=dask_runner.DaskRunner(), options=_options(cluster_of_two_hash_seeds)) as p:
    _ = (p
         | beam.Create(pairs)
         | beam.Reshuffle()  # the pairs of one key now sit on both workers
         | beam.GroupByKey()
         | beam.Map(lambda kv, d=out: _write(d, kv[0][1] * 10**6 + len(list(kv[1])) * 1000 + len(kv[0][2]))))
  want = sorted(k * 10**6 + sum(1 for i in range(NUM_ELEMENTS) if i % 7 == k) * 1000 + k for k in range(7))
  assert sorted(e for e, _ in _calls(out)) == want


class _LifecycleFn(beam.DoFn):
  """Records setup and teardown as files; counts bundles per instance."""

  def __init__(self, folder: str):
    self._folder = folder

  def setup(self):
    import uuid  # pylint: disable=g-import-not-at-top
    self._name = uuid.uuid4().hex
    with open(os.path.join(self._folder, f"setup-{self._name}"), "x", encoding="utf-8"):
      pass

  def process(self, element):
    yield element

  def teardown(self):
    with open(os.path.join(self._folder, f"teardown-{self._name}"), "x", encoding="utf-8"):
      pass


def _idle_dofns() -> int:
  return sum(len(v) for v in dask_runner._IDLE_DOFNS.values())  # pylint: disable=protected-access


def test_dofns_are_set_up_once_per_worker_and_torn_down_when_the_job_ends(cluster, tmp_path):
  (events,) = _folders(tmp_path, "events")
  with beam.Pipeline(runner=dask_runner.DaskRunner(), options=_options(cluster)) as p:
    _ = p | beam.Create(list(range(NUM_ELEMENTS))) | beam.Reshuffle() | beam.ParDo(_LifecycleFn(events))
  names = os.listdir(events)
  setups = {n.split("-", 1)[1] for n in names if n.startswith("setup-")}
  teardowns = {n.split("-", 1)[1] for n in names if n.startswith("teardown-")}
  # Many partitions (NUM_ELEMENTS / partition size), but at most one instance per worker thread.
  assert 1 <= len(setups) <= 2 and teardowns == setups
  with distributed.Client(cluster.scheduler_address) as client:
    assert set(client.run(_idle_dofns).values()) == {0}


def test_read_from_text_and_impulse(cluster, tmp_path):
  """Reads (beam.io.Read of a bounded source, Impulse) are translated, not silently empty."""
  (out,) = _folders(tmp_path, "out")
  (tmp_path / "table.csv").write_text("".join(f"{i}\n" for i in range(NUM_ELEMENTS)))
  with beam.Pipeline(runner=dask_runner.DaskRunner(), options=_options(cluster)) as p:
    lines = p | beam.io.ReadFromText(str(tmp_path / "table.csv")) | beam.Map(int)
    more = p | beam.Impulse() | beam.FlatMap(lambda _: range(NUM_ELEMENTS, NUM_ELEMENTS + 5))
    _ = (lines, more) | beam.Flatten() | beam.Reshuffle() | beam.Map(lambda x, d=out: _write(d, x))
  assert sorted(e for e, _ in _calls(out)) == list(range(NUM_ELEMENTS + 5))


class _StampFn(beam.DoFn):
  """Records '<step>-<element>' with the time it was processed."""

  def __init__(self, folder: str, step: str):
    self._folder = folder
    self._step = step

  def process(self, element):
    import time  # pylint: disable=g-import-not-at-top
    with open(os.path.join(self._folder, f"{self._step}-{element}"), "x", encoding="utf-8") as f:
      f.write(str(time.monotonic_ns()))
    yield element


def test_elements_stream_through_fused_pardos(cluster, tmp_path):
  """Within one partition the second ParDo sees element 0 before the first has seen the partition's last one.

  50 elements cut by position into 8 partitions (four per worker thread): the first holds 0..5.
  """
  (stamps,) = _folders(tmp_path, "stamps")
  options = _options(cluster, "--dask_partition_size=1000")
  with beam.Pipeline(runner=dask_runner.DaskRunner(), options=options) as p:
    _ = (p
         | beam.Create(["one archive"])
         | beam.FlatMap(lambda _: range(50))
         | beam.Reshuffle()
         | "First" >> beam.ParDo(_StampFn(stamps, "first"))
         | "Second" >> beam.ParDo(_StampFn(stamps, "second")))
  stamp = {name: int((tmp_path / "stamps" / name).read_text()) for name in os.listdir(stamps)}
  assert len(stamp) == 100
  assert stamp["second-0"] < stamp["first-5"]


def test_a_streamed_partition_travels_as_a_list_and_cannot_be_read_twice():
  import pickle  # pylint: disable=g-import-not-at-top

  assert pickle.loads(pickle.dumps(dask_runner._Stream(iter(range(3))))) == [0, 1, 2]  # pylint: disable=protected-access
  stream = dask_runner._Stream(iter(range(3)))  # pylint: disable=protected-access
  assert list(stream) == [0, 1, 2]
  with pytest.raises(RuntimeError, match="read twice"):
    list(stream)


BUFFER_BYTES = 8 << 20  # an image-sized buffer, well above glibc's static 128 KiB mmap threshold
BUFFERS_PER_ELEMENT = 20
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class _PageFaultsFn(beam.DoFn):
  """Records, per element, the minor page faults of allocating, touching and freeing image-sized buffers."""

  def __init__(self, folder: str):
    self._folder = folder

  def process(self, element):
    import resource  # pylint: disable=g-import-not-at-top

    import numpy as np  # pylint: disable=g-import-not-at-top

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(BUFFERS_PER_ELEMENT):
      buffer = np.ones(BUFFER_BYTES, dtype=np.uint8)
      del buffer
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    pinned = "MALLOC_TRIM_THRESHOLD_" in os.environ
    with open(os.path.join(self._folder, str(element)), "x", encoding="utf-8") as f:
      f.write(f"{faults} {int(pinned)}")
    yield element


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
                    reason="mallopt thresholds are glibc's")
def test_image_sized_buffers_are_reused_on_workers_started_with_malloc_env(cluster, tmp_path):
  """Dask's nanny pins malloc's thresholds (MALLOC_TRIM_THRESHOLD_): unless the runner unpins them, each
  buffer is mmapped afresh and faulted in page by page; unpinned, a freed buffer is reused."""
  (out,) = _folders(tmp_path, "out")
  with beam.Pipeline(runner=dask_runner.DaskRunner(), options=_options(cluster)) as p:
    _ = p | beam.Create(list(range(8))) | beam.Reshuffle() | beam.ParDo(_PageFaultsFn(out))
  got = {name: [int(v) for v in (tmp_path / "out" / name).read_text().split()] for name in os.listdir(out)}
  assert len(got) == 8
  assert all(pinned for _, pinned in got.values()), "the premise: workers start with MALLOC_TRIM_THRESHOLD_ set"
  pages_per_buffer = BUFFER_BYTES // PAGE_BYTES
  # Faulting every buffer in costs BUFFERS_PER_ELEMENT * pages_per_buffer per element; reuse at most the first.
  assert max(faults for faults, _ in got.values()) < 3 * pages_per_buffer, got
