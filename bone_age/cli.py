"""One command-line convention for every `boneage-*` command.

Each command defines its flags in a private absl `FlagValues`, grouped
(`FlagGroup`), and hands them to `parse`:
- `--help` (also `-h`, `--helpshort`) prints the command's usage and its own
  flags by group, one short line each; `--helpfull` prints absl's full text.
- A usage mistake (unknown flag, bad value, missing required flag, a path
  that is not there) exits 2 with one line on stderr naming the flag or path
  and the fix (`UsageError`). Commands that hand the rest of their command
  line to Beam check it against Beam's own option parser first
  (`check_beam_args`), so a mistyped flag is an error, never discarded.
- `--verbosity=info|warning|debug` (every command): info shows this
  project's progress and results only; warning adds the libraries' warnings;
  debug brings back everything, TensorFlow's native start-up lines and the
  traceback of a usage error included.

`quiet_start` must run before TensorFlow or Beam is imported: TensorFlow reads
TF_CPP_MIN_LOG_LEVEL once, at import, and Beam logs at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import tempfile
import textwrap
import traceback
from typing import Callable, Sequence

from absl import flags

VERBOSITY_LEVELS = ("info", "warning", "debug")
DEFAULT_VERBOSITY = "info"
USAGE_EXIT_CODE = 2
_HELP_SHORT = ("-h", "--help", "-help", "--helpshort", "-?")
_HELP_FULL = ("--helpfull",)
HELP_FLAGS = (*_HELP_SHORT, *_HELP_FULL)
# TensorFlow's native log floor per verbosity: 3 hides its INFO, WARNING and ERROR start-up lines
# (oneDNN, "Could not find cuda drivers", cuInit on a CPU machine); real failures still raise in Python.
_TF_CPP_MIN_LOG_LEVEL = {"info": "3", "warning": "1", "debug": "0"}
# Python log level of third-party libraries (Beam, TFDS, absl, TensorFlow) per verbosity.
_LIBRARY_LOG_LEVEL = {"info": logging.ERROR, "warning": logging.WARNING, "debug": logging.DEBUG}
_HELP_LINE_WIDTH = 100
# Set by quiet_start unless --verbosity=debug: Beam's local multi-process workers (beam_pipelines.runners) then
# send their stderr to a log file instead of the console.
QUIET_WORKERS_ENV = "BONEAGE_QUIET_WORKERS"


class UsageError(Exception):
  """A mistake in the command line or a path it names; the message says what and how to fix it."""


@dataclasses.dataclass(frozen=True)
class FlagGroup:
  title: str
  names: tuple[str, ...]


def verbosity_from_argv(argv: Sequence[str]) -> str:
  """The --verbosity value in argv (before any flag parsing), DEFAULT_VERBOSITY if absent or unknown."""
  for i, arg in enumerate(argv):
    if arg.startswith("--verbosity="):
      value = arg.split("=", 1)[1]
    elif arg == "--verbosity" and i + 1 < len(argv):
      value = argv[i + 1]
    else:
      continue
    return value if value in VERBOSITY_LEVELS else DEFAULT_VERBOSITY
  return DEFAULT_VERBOSITY


def quiet_start(argv: Sequence[str] | None = None) -> str:
  """Sets native and Python log levels for the verbosity in argv; returns that verbosity.

  Call it first in a console script's main, before TensorFlow or Beam is
  imported. The environment variable also reaches Beam's worker processes. A
  TF_CPP_MIN_LOG_LEVEL the user set is kept unless --verbosity=debug.
  """
  verbosity = verbosity_from_argv(sys.argv if argv is None else argv)
  if verbosity == "debug":
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = _TF_CPP_MIN_LOG_LEVEL[verbosity]
    os.environ.pop(QUIET_WORKERS_ENV, None)
  else:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", _TF_CPP_MIN_LOG_LEVEL[verbosity])
    os.environ[QUIET_WORKERS_ENV] = "1"
  root = logging.getLogger()
  ours = [h for h in root.handlers if getattr(h, _OURS, False)]
  if not ours:
    # Our handler replaces basicConfig's "WARNING:root:" and absl's "I1202 file.py:12]" prefixes: a plain
    # message for INFO, the level and logger for anything louder.
    handler = _StderrHandler()
    setattr(handler, _OURS, True)
    handler.setFormatter(_ConsoleFormatter())
    for other in list(root.handlers):
      # basicConfig's handler (installed by a library's import-time logging.warning) and absl's.
      plain_stderr = type(other) is logging.StreamHandler and other.stream in (sys.stderr, sys.__stderr__)
      if plain_stderr or type(other).__name__ == "ABSLHandler":
        root.removeHandler(other)
    root.addHandler(handler)
    ours = [handler]
  for handler in ours:
    handler.filters = [_LibraryFilter(_LIBRARY_LOG_LEVEL[verbosity])]
  root.setLevel(logging.DEBUG if verbosity == "debug" else logging.INFO)
  for name in ("absl", "tensorflow_datasets", "apache_beam"):
    logging.getLogger(name).setLevel(logging.NOTSET)  # the handler's filter decides
  return verbosity


_OURS = "_boneage_console"
# Records logged from files of these packages are this project's own: shown from INFO up at every verbosity.
_PROJECT_PACKAGES = frozenset({"bone_age", "beam_pipelines", "tfds_rsna", "trainer", "batch_inference", "launch",
                               "scripts"})


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever sys.stderr is at the time of the record (pytest swaps it per test)."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value  # always the current sys.stderr


class _ConsoleFormatter(logging.Formatter):

  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.exc_info:
      message += "\n" + self.formatException(record.exc_info)
    if record.levelno == logging.INFO:
      return message
    return f"{record.levelname} {record.name}: {message}"


class _LibraryFilter(logging.Filter):
  """Passes this project's records from INFO up, and other libraries' records from `library_level` up."""

  def __init__(self, library_level: int):
    super().__init__()
    self._library_level = library_level

  def filter(self, record: logging.LogRecord) -> bool:
    folders = (record.pathname or "").split(os.sep)[-3:-1]
    ours = any(folder in _PROJECT_PACKAGES for folder in folders)
    return record.levelno >= (logging.INFO if ours else self._library_level)


@contextlib.contextmanager
def native_stderr_silenced(verbosity: str = DEFAULT_VERBOSITY):
  """Sends file descriptor 2 to a temporary file inside the block, unless verbosity is debug.

  TensorFlow's shared libraries log their start-up lines ("Could not find
  cuda drivers") through native logging before TF_CPP_MIN_LOG_LEVEL applies.
  If the block raises, what the libraries wrote is replayed on stderr.
  """
  if verbosity == "debug":
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode("utf-8", "replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def import_tensorflow_quietly(argv: Sequence[str] | None = None) -> None:
  """Imports TensorFlow with its native start-up lines silenced (see native_stderr_silenced)."""
  if "tensorflow" in sys.modules:
    return
  with native_stderr_silenced(verbosity_from_argv(sys.argv if argv is None else argv)):
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401


def define_verbosity(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum("verbosity", DEFAULT_VERBOSITY, VERBOSITY_LEVELS,
                    "info: progress and results; warning: also library warnings; debug: everything, with "
                    "TensorFlow's start-up lines and tracebacks.", flag_values=fv)


def _first_sentence(text: str) -> str:
  text = " ".join(text.split())
  end = text.find(". ")
  return text if end < 0 else text[:end + 1]


def _flag_line(flag: flags.Flag) -> str:
  default = flag.default_as_str if flag.default is not None else ""
  if flag.flag_type() == "bool":
    name = f"--[no]{flag.name}"
  else:
    name = f"--{flag.name}"
  enum_values = getattr(getattr(flag, "parser", None), "enum_values", None)
  if enum_values:
    name += "=" + "|".join(enum_values)
  shown_default = f" (default {default})" if default and default not in ("''", "'false'", "'[]'") else ""
  description = flag.help
  if enum_values and description.startswith("<"):
    description = description.split(">: ", 1)[-1]  # absl's "<a|b>: " prefix repeats the values shown above
  return f"  {name}{shown_default}: {_first_sentence(description)}"


def help_text(prog: str, usage: str, fv: flags.FlagValues, groups: Sequence[FlagGroup]) -> str:
  """The --help text: usage, then each group's flags, one wrapped line each, then the common flags."""
  lines = [f"usage: {prog} {usage}".rstrip()]
  listed = set()
  for group in (*groups, FlagGroup("Common", ("verbosity",))):
    names = [n for n in group.names if n in fv]
    if not names:
      continue
    lines += ["", f"{group.title}:"]
    for name in names:
      listed.add(name)
      lines += textwrap.wrap(_flag_line(fv[name]), _HELP_LINE_WIDTH, subsequent_indent="      ")
  flag_items = fv._flags().items()  # pylint: disable=protected-access
  rest = sorted(n for n, f in flag_items if n == f.name and n not in listed)
  if rest:
    lines += ["", "Other:"]
    for name in rest:
      lines += textwrap.wrap(_flag_line(fv[name]), _HELP_LINE_WIDTH, subsequent_indent="      ")
  lines += ["", "--helpfull shows absl's full flag text."]
  return "\n".join(lines)


def parse(prog: str, usage: str, fv: flags.FlagValues, argv: Sequence[str], groups: Sequence[FlagGroup] = (),
          required: Sequence[str] = (), extra_args: str = "none") -> list[str]:
  """Parses argv[1:] into fv; returns what fv did not know (see extra_args).

  Args:
    prog: The command name, for messages.
    usage: One line of usage after the command name.
    fv: The command's flags (define_verbosity is added here when missing).
    argv: A full command line (argv[0] is the program).
    groups: How --help groups the flags.
    required: Flags that must be given; a missing one is a usage error naming it.
    extra_args: "none": anything fv does not know is a usage error; "beam": the rest is checked against
      Beam's pipeline options and returned.

  Raises:
    UsageError: for any mistake; SystemExit(0) after printing help.
  """
  if "verbosity" not in fv:
    define_verbosity(fv)
  args = list(argv[1:])
  if any(a in _HELP_FULL for a in args):
    print(f"usage: {prog} {usage}\n\n{fv.get_help()}")
    raise SystemExit(0)
  if any(a in _HELP_SHORT for a in args):
    print(help_text(prog, usage, fv, groups))
    raise SystemExit(0)
  if fv.is_parsed():
    fv.unparse_flags()
  try:
    rest = fv([prog, *args], known_only=True)[1:]
  except flags.Error as e:
    raise UsageError(str(e).replace("flag --", "--", 1)) from e
  for name in required:
    if fv[name].value in (None, "", []):
      raise UsageError(f"--{name} is required: {_first_sentence(fv[name].help)}")
  if extra_args == "beam":
    check_beam_args(rest)
  elif rest:
    raise UsageError(f"unknown flag or argument {rest[0]!r}: see {prog} --help")
  return rest


def check_beam_args(beam_args: Sequence[str]) -> None:
  """Raises UsageError for the first argument that no registered Beam PipelineOptions class knows.

  Beam itself logs "Discarding unparseable args" and runs on; a mistyped
  flag of ours would then silently do nothing. An empty list imports nothing (launch stays light).
  """
  if not beam_args:
    return
  # pylint: disable=g-import-not-at-top,protected-access
  from apache_beam.options import pipeline_options
  try:
    from apache_beam.runners.dask import dask_runner  # registers DaskOptions  # noqa: F401
  except ImportError:
    pass

  class _Parser(pipeline_options._BeamArgumentParser):

    def error(self, message):
      raise UsageError(f"Beam option: {message}")

  parser = _Parser(allow_abbrev=False)
  classes = {}
  for cls in pipeline_options.PipelineOptions.__subclasses__():
    classes.setdefault(str(cls), cls)
  for cls in classes.values():
    cls._add_argparse_args(parser)
  _, unknown = parser.parse_known_args(list(beam_args))
  if unknown:
    raise UsageError(f"unknown flag {unknown[0]!r}: neither this command nor Beam knows it (see --help)")


def run_main(prog: str, main_fn: Callable[[], int | None], argv: Sequence[str],
             user_errors: tuple[type[BaseException], ...] = ()) -> None:
  """Runs main_fn; exits with its status when non-zero, returns on 0 (tests call mains in-process).

  A UsageError or one of user_errors exits 2 with one line on stderr; the
  traceback is printed only with --verbosity=debug.
  """
  try:
    code = main_fn()
  except (UsageError, *user_errors) as e:
    if verbosity_from_argv(argv) == "debug":
      traceback.print_exc()
    message = " ".join(str(e).split()) or type(e).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT_CODE)  # pylint: disable=raise-missing-from
  if code:
    sys.exit(code)


def require_path(flag_name: str, path: str | None, hint: str) -> None:
  """UsageError naming --flag_name and path when path does not exist (local or any tf.io/Beam filesystem)."""
  if not path:
    return
  if "://" in path:
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
    exists = FileSystems.exists(path)
  else:
    exists = os.path.exists(path)
  if not exists:
    raise UsageError(f"--{flag_name}={path}: no such file or folder; {hint}")
