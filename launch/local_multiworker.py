"""Runs N `python -m trainer.train_main` processes on localhost as one MultiWorkerMirrored cluster.

Each worker gets a TF_CONFIG naming every worker's address (free ports
picked here) and its own index, exactly what a real cluster scheduler
(Vertex AI, Kubernetes) provides, so the multi_worker code path can be
exercised on one machine:

  python -m launch.local_multiworker --num_workers=2 --log_dir=/tmp/logs -- \
      --data_dir=DATA --model_dir=RUN --experiment=demo_cpu --strategy=multi_worker

Worker i's output goes to <log_dir>/worker_<i>.log. If any worker fails the
others are stopped (they would otherwise wait forever in a collective), and
the exit status is the first non-zero one.

`--entry` picks what each worker runs: a module (default trainer.train_main,
run with `python -m`) or a .py file (tests pass their hook script).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

TRAINER_MODULE = "trainer.train_main"


def free_ports(count: int) -> list[int]:
  """Ports the OS reports free right now (held open together so they differ)."""
  sockets = []
  try:
    for _ in range(count):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind(("localhost", 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def tf_configs(num_workers: int, ports: list[int] | None = None) -> list[dict]:
  """One TF_CONFIG dict per worker (worker 0 is the chief)."""
  ports = ports or free_ports(num_workers)
  cluster = {"worker": [f"localhost:{port}" for port in ports]}
  return [{"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(num_workers)]


def entry_argv(entry: str = TRAINER_MODULE) -> list[str]:
  """The interpreter command for a module name or a .py file."""
  return [sys.executable, entry] if entry.endswith(".py") else [sys.executable, "-m", entry]


def run_local_cluster(num_workers: int, trainer_args: list[str], *, log_dir: str | None = None,
                      timeout_s: float | None = None, env: dict | None = None,
                      entry: str = TRAINER_MODULE) -> list[int]:
  """Starts the workers, waits for all of them, returns their exit codes (worker order).

  Raises:
    TimeoutError: if the cluster runs past timeout_s (all workers are killed first).
  """
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1, got {num_workers}")
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
  processes, logs = [], []
  for index, tf_config in enumerate(tf_configs(num_workers)):
    worker_env = dict(os.environ if env is None else env)
    worker_env["TF_CONFIG"] = json.dumps(tf_config)
    log = open(os.path.join(log_dir, f"worker_{index}.log"), "wb") if log_dir else None
    logs.append(log)
    processes.append(subprocess.Popen([*entry_argv(entry), *trainer_args], env=worker_env,
                                      stdout=log or None, stderr=subprocess.STDOUT if log else None))
  deadline = None if timeout_s is None else time.monotonic() + timeout_s
  try:
    while any(p.poll() is None for p in processes):
      if any(p.returncode not in (None, 0) for p in processes):
        _stop(processes)  # a dead worker leaves the others blocked in a collective
        break
      if deadline is not None and time.monotonic() > deadline:
        _stop(processes)
        raise TimeoutError(f"local cluster still running after {timeout_s} s; workers killed")
      time.sleep(0.2)
    return [p.wait() for p in processes]
  finally:
    _stop(processes)
    for log in logs:
      if log:
        log.close()


def _stop(processes) -> None:
  for p in processes:
    if p.poll() is None:
      p.terminate()
  for p in processes:
    try:
      p.wait(timeout=10)
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="launch.local_multiworker", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")
  parser.add_argument("--num_workers", type=int, default=2)
  parser.add_argument("--log_dir", default=None, help="worker_<i>.log per worker (default: inherit the terminal)")
  parser.add_argument("--timeout_s", type=float, default=None)
  parser.add_argument("--entry", default=TRAINER_MODULE, help="module (python -m) or .py file each worker runs")
  parser.add_argument("trainer_args", nargs=argparse.REMAINDER, help="-- then boneage-train flags")
  args = parser.parse_args(argv)
  trainer_args = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args
  codes = run_local_cluster(args.num_workers, trainer_args, log_dir=args.log_dir, timeout_s=args.timeout_s,
                             entry=args.entry)
  print(f"worker exit codes: {codes}")
  return next((c for c in codes if c), 0)


if __name__ == "__main__":
  sys.exit(main())
