"""Run the repository's scripts as jobs: a few at a time, in dependency order, one log file each.

The local backend of sparselearning/launch.py (``--seeds``/``--launcher local`` of the training scripts,
``benchmarks/reproduce_small.py``) and what ``make demo`` (sparselearning/demo.py) runs on. Each job is
``python SCRIPT FLAGS`` started from the repository root exactly as a user would type it. A failed job
stops the others; so do Ctrl-C and SIGTERM (the running children are terminated, and the training
scripts' ``--resume`` continues them from their last completed epoch on the next invocation).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    name: str
    argv: list[str]  # python script + flags, relative to the repository root
    deps: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    start: float = 0.0
    seconds: float = 0.0


def run_jobs(jobs: list[Job], n_parallel: int, threads: int, log_dir: Path, echo_commands: bool = False,
             stopped_by: str = "jobs", cwd: Path = REPO, to_resume: str = "run it again to resume") -> None:
    """Run the jobs respecting their dependencies, n_parallel at a time, each with `threads` torch threads,
    from the folder `cwd` (the repository root unless given).

    Logs go to ``log_dir/<name>.log`` (appended: a resumed job's log keeps the earlier runs). Progress is
    printed as ``[t s] start/done name`` lines, or the ``$ python ...`` command lines (echo_commands).
    A failed job raises SystemExit with the last lines of its log.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    pending = {j.name: j for j in jobs}
    running: dict[str, Job] = {}
    done: set[str] = set()
    t0, logs = time.time(), {}

    def on_term(signum, frame):
        raise SystemExit(f"{stopped_by} stopped by signal {signum}; {to_resume}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while pending or running:
            for name in [n for n, j in pending.items() if all(d in done for d in j.deps)]:
                if len(running) >= n_parallel:
                    break
                job = pending.pop(name)
                logs[name] = open(log_dir / f"{name}.log", "a")
                logs[name].write("$ python " + " ".join(job.argv) + "\n")
                logs[name].flush()
                job.start = time.time()
                job.proc = subprocess.Popen([sys.executable, *job.argv], cwd=cwd, env=env, stdout=logs[name],
                                            stderr=subprocess.STDOUT)
                running[name] = job
                print("$ python " + " ".join(job.argv) if echo_commands else
                      f"[{time.time() - t0:6.0f} s] start  {name}", flush=True)
            time.sleep(0.5)
            for name, job in list(running.items()):
                rc = job.proc.poll()
                if rc is None:
                    continue
                job.seconds = time.time() - job.start
                logs[name].close()
                del running[name]
                if rc != 0:
                    tail = (log_dir / f"{name}.log").read_text().splitlines()[-15:]
                    raise SystemExit("\n".join(tail) + f"\n{stopped_by} stopped: `python {' '.join(job.argv)}` "
                                     f"failed (exit {rc}; log: {log_dir / (name + '.log')})")
                done.add(name)
                if not echo_commands:
                    print(f"[{time.time() - t0:6.0f} s] done   {name} ({job.seconds:.0f} s) - {len(done)}/{len(jobs)}",
                          flush=True)
            if not running and pending and not any(all(d in done for d in j.deps) for j in pending.values()):
                raise SystemExit(f"unsatisfiable dependencies: {sorted(pending)}")
    finally:
        for job in running.values():  # our own children only, by their handles
            job.proc.terminate()
        for job in running.values():
            try:
                job.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait()
        signal.signal(signal.SIGTERM, previous)
