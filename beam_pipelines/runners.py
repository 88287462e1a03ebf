"""Which Beam runner a job uses, chosen so that nothing is downloaded.

Beam's DirectRunner first tries its Prism runner, which downloads a binary
from the internet, and only then falls back to the in-process FnApiRunner. A
job on a machine that holds patient data must not make that outbound
attempt, so a plain or `DirectRunner` job runs `LocalRunner`: the FnApiRunner
itself, as DirectRunner's own fallback builds it (same options, including
`--direct_num_workers` and `--direct_running_mode`). `DaskRunner` maps to the
fixed runner in `beam_pipelines.dask_runner`; every other runner name
(DataflowRunner, a dotted class path) is passed through untouched.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile

from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.runners.runner import PipelineRunner

from bone_age import cli

LOCAL_RUNNER = "beam_pipelines.runners.LocalRunner"
DASK_RUNNER = "beam_pipelines.dask_runner.DaskRunner"
_ALIASES = {
    "directrunner": LOCAL_RUNNER,
    "direct": LOCAL_RUNNER,
    "daskrunner": DASK_RUNNER,
    "dask": DASK_RUNNER,
}


class LocalRunner(PipelineRunner):
  """Beam's FnApiRunner for batch jobs on this machine, without trying Prism first.

  `--direct_running_mode` (in_memory, multi_threading, multi_processing) and
  `--direct_num_workers` are read by the FnApiRunner from the options.
  """

  def run_pipeline(self, pipeline, options):
    # pylint: disable=g-import-not-at-top
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # The provision info carries the options to SDK workers (multi_processing
    # workers read --direct_num_workers and friends from it).
    encoded_options = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision_info = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded_options))
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_processing" or not os.environ.get(cli.QUIET_WORKERS_ENV):
      return fn_runner.FnApiRunner(provision_info=provision_info).run_pipeline(pipeline, options)
    # A console command asked for quiet workers: the same worker processes, their stderr (import-time warnings,
    # start-up lines) appended to a log file. Failures still reach this process through the Fn API.
    runner = fn_runner.FnApiRunner(provision_info=provision_info, default_environment=_quiet_worker_environment())
    direct.direct_running_mode = _OWN_ENVIRONMENT  # FnApiRunner then keeps the environment given above
    try:
      return runner.run_pipeline(pipeline, options)
    finally:
      direct.direct_running_mode = "multi_processing"


# A running-mode value FnApiRunner does not special-case: it runs the default environment it was built with.
_OWN_ENVIRONMENT = "boneage_subprocess_workers"


def worker_log_path() -> str:
  """Where quiet multi-process workers of this process append their stderr."""
  return os.path.join(tempfile.gettempdir(), f"boneage-beam-workers-{os.getpid()}.log")


def _quiet_worker_environment():
  from apache_beam.transforms import environments  # pylint: disable=g-import-not-at-top
  command = (f"{shlex.quote(sys.executable)} -m apache_beam.runners.worker.sdk_worker_main "
             f"2>>{shlex.quote(worker_log_path())}")
  return environments.SubprocessSDKEnvironment.from_command_string(command_string=command)


def _mapped(name: str) -> str:
  return _ALIASES.get(name.strip().lower(), name)


def resolve_runner_args(beam_args: list[str]) -> list[str]:
  """Beam arguments with the runner made explicit and download-free.

  No `--runner` or `--runner=DirectRunner` -> `LocalRunner`; `DaskRunner` ->
  the fixed Dask runner; anything else is left as given. Both spellings
  (`--runner=X` and `--runner X`) are understood.

  Args:
    beam_args: Command-line arguments meant for Beam's PipelineOptions.

  Returns:
    A new list; `beam_args` is not changed.
  """
  mapped = []
  has_runner = False
  expect_value = False
  for arg in beam_args:
    if expect_value:
      arg = _mapped(arg)
      expect_value = False
    elif arg == "--runner":
      has_runner = expect_value = True
    elif arg.startswith("--runner="):
      has_runner = True
      arg = "--runner=" + _mapped(arg[len("--runner="):])
    mapped.append(arg)
  if not has_runner:
    mapped.append(f"--runner={LOCAL_RUNNER}")
  return mapped
