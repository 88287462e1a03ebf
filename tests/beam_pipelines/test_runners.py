"""The local runner: no Prism (no download attempt), runner names resolved."""

import subprocess
import sys
import textwrap

import pytest

from beam_pipelines import runners

# Runs a two-element pipeline in a fresh interpreter; it records which
# processes ran the elements and prints whether Beam's Prism runner module
# (the one that downloads a binary) was ever imported.
_PROBE = textwrap.dedent("""
    import os
    import pathlib
    import sys
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from beam_pipelines import runners
    pid_dir, args = sys.argv[1], sys.argv[2:]
    if args and args[0] == "--resolve":
      args = runners.resolve_runner_args(args[1:])
    with beam.Pipeline(options=PipelineOptions(args)) as p:
      _ = p | beam.Create([1, 2]) | beam.Map(lambda x: (pathlib.Path(pid_dir) / str(os.getpid())).touch())
    print("PID", os.getpid())
    print("PRISM_IMPORTED" if "apache_beam.runners.portability.prism_runner" in sys.modules else "NO_PRISM")
""")


def _probe(pid_dir, *args: str) -> tuple[str, set[int]]:
  """(PRISM_IMPORTED or NO_PRISM, ids of the worker processes other than the launcher)."""
  pid_dir.mkdir(exist_ok=True)
  done = subprocess.run([sys.executable, "-c", _PROBE, str(pid_dir), *args], capture_output=True, text=True,
                        timeout=120, check=True)
  lines = done.stdout.strip().splitlines()
  launcher_pid = int(lines[-2].split()[1])
  return lines[-1], {int(p.name) for p in pid_dir.iterdir()} - {launcher_pid}


@pytest.mark.parametrize("argv,expected", [
    ([], [f"--runner={runners.LOCAL_RUNNER}"]),
    (["--runner=DirectRunner", "--direct_num_workers=2"],
     [f"--runner={runners.LOCAL_RUNNER}", "--direct_num_workers=2"]),
    (["--runner", "DaskRunner"], ["--runner", runners.DASK_RUNNER]),
    (["--runner=dask"], [f"--runner={runners.DASK_RUNNER}"]),
    (["--runner=DataflowRunner", "--project=p"], ["--runner=DataflowRunner", "--project=p"]),
])
def test_runner_names_resolve(argv, expected):
  assert runners.resolve_runner_args(argv) == expected


def test_beams_direct_runner_tries_prism_and_ours_never_does(tmp_path):
  # The first probe shows the check can fail: Beam's own DirectRunner imports
  # (and starts) Prism before falling back.
  assert _probe(tmp_path / "beam", "--runner=DirectRunner")[0] == "PRISM_IMPORTED"
  assert _probe(tmp_path / "ours", "--resolve", "--runner=DirectRunner") == ("NO_PRISM", set())
  assert _probe(tmp_path / "default", "--resolve") == ("NO_PRISM", set())


def test_local_runner_honours_multi_processing_mode(tmp_path):
  verdict, worker_pids = _probe(tmp_path / "multi", "--resolve", "--direct_running_mode=multi_processing",
                                "--direct_num_workers=2")
  assert verdict == "NO_PRISM" and worker_pids  # the elements ran in worker processes, not the launcher
