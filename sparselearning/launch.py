"""Run a set of training jobs: on this machine (a few at a time) or on SLURM through submitit.

``--seeds 18,19,20`` turns one command of a training script into an ensemble's members: the same
script with ``--seed 18``, ``--seed 19``, ... (``{seed}`` in any flag is replaced too, e.g. PF's
``--pretrained .../seed={seed}/model.pth``), each into its usual ``seed=N`` folder with its own
lock, resume and summary. ``--launcher`` says where they run:

- ``local``: here, one after another or ``--parallel N`` at a time (the CPU threads shared out), with
  the scheduler of ``jobs.py``; Ctrl-C/SIGTERM stop them all, and the same command plus
  ``--resume`` continues each from its last completed epoch.
- ``slurm``: one submitit job array on SLURM (logs in ``<output-dir>/slurm/``); each job runs the
  script in a child process. When SLURM warns of the time limit or a preemption (submitit's
  ``USR2``), the member stops its training (SIGTERM: the last complete checkpoint stays), and
  submitit requeues it with ``--resume``; a job SLURM itself requeues (``SLURM_RESTART_COUNT``)
  resumes too. Prints one line per member (job id, run folder) and returns, unless ``--wait``.

``launch_members(script)`` is the hook at the top of each entry script; ``launch(jobs, ...)`` runs
any list of ``jobs.Job`` (with dependencies; on SLURM as ``afterok``) for benchmarks/reproduce_small.py.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission, TorchDistributedEnvironment

from .errors import OneLineArgumentParser, UsageError, run_cli
from .jobs import REPO, Job, run_jobs

LAUNCHERS = ("local", "slurm")
TO_RESUME = "the members keep their last complete checkpoints - run the same command plus --resume to continue"
SLURM_TOOLS = ("sbatch", "srun")  # submitit's SLURM executor needs both on PATH
# launcher flags and whether each takes a value (members are launched without them)
LAUNCH_FLAGS = {"--seeds": True, "--launcher": True, "--parallel": True, "--wait": False, "--slurm-partition": True,
                "--slurm-gpus-per-node": True, "--slurm-cpus-per-task": True, "--slurm-mem-gb": True,
                "--slurm-timeout-min": True, "--slurm-account": True, "--slurm-array-parallelism": True,
                "--slurm-nodes": True, "--slurm-extra": True}


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    """--seeds, --launcher and the SLURM flags (what launch_members reads; a single local run ignores them)."""
    g = parser.add_argument_group("ensembles and clusters (--seeds, --launcher)")
    g.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="train one member per seed (each as with --seed S, into its own seed=S folder); "
                        "{seed} in any flag is replaced by the member's seed")
    g.add_argument("--launcher", default="local", choices=LAUNCHERS,
                   help="local: here, --parallel at a time; slurm: one SLURM job array through submitit")
    g.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="local: members running at once (CPU threads shared out between them)")
    g.add_argument("--wait", action="store_true", help="slurm: wait for the jobs, a line per member as it ends")
    add_slurm_args(g)


def add_slurm_args(g) -> None:
    """The --slurm-* flags (a parser or an argument group)."""
    g.add_argument("--slurm-partition", default=None, help="slurm: partition (sbatch --partition)")
    g.add_argument("--slurm-gpus-per-node", type=int, default=None, metavar="G",
                   help="slurm: GPUs per job (ImageNet/main.py: G processes per node, one per GPU)")
    g.add_argument("--slurm-nodes", type=int, default=1, metavar="N",
                   help="slurm: nodes per job (ImageNet/main.py: N x G processes of one DDP run)")
    g.add_argument("--slurm-cpus-per-task", type=int, default=None, metavar="C", help="slurm: CPUs per process")
    g.add_argument("--slurm-mem-gb", type=float, default=None, metavar="GB", help="slurm: memory per node")
    g.add_argument("--slurm-timeout-min", type=int, default=60 * 24, metavar="MIN",
                   help="slurm: time limit per job; a job that reaches it is requeued and resumes")
    g.add_argument("--slurm-account", default=None, help="slurm: account to charge (sbatch --account)")
    g.add_argument("--slurm-array-parallelism", type=int, default=256, metavar="K",
                   help="slurm: members of the job array running at once")
    g.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="slurm: any other sbatch option, e.g. qos=high or constraint=a100 (repeatable)")


def drop_launcher_flags(args: argparse.Namespace) -> None:
    """Remove the launcher's flags from a run's flags (no run setting; its summary does not list them); refuse
    launcher flags on a single run here (launch_members handles the rest before a run parses its flags)."""
    defaults = vars(launcher_parser().parse_args([]))
    given = {k for k, v in defaults.items() if getattr(args, k, v) != v}
    for dest in defaults:
        args.__dict__.pop(dest, None)
    stray = sorted(k for k in given if k.startswith("slurm_") or k in ("wait", "parallel"))
    if stray and not {"seeds", "launcher"} & given:
        flag = "--" + stray[0].replace("_", "-")
        raise UsageError(f"{flag} is for launches with --seeds or --launcher slurm; add one of those or drop {flag}")


def launcher_parser() -> OneLineArgumentParser:
    # no abbreviations: --seed must not read as --seeds
    parser = OneLineArgumentParser(add_help=False, allow_abbrev=False)
    add_launcher_args(parser)
    return parser


@dataclass
class Slurm:
    """SLURM settings of a launch, checked (submitit's SlurmExecutor parameters)."""
    log_root: Path  # <output-dir>/slurm
    parameters: dict = field(default_factory=dict)
    wait: bool = False

    def executor(self) -> submitit.SlurmExecutor:
        ex = submitit.SlurmExecutor(folder=str(self.log_root / "%j"))
        try:
            ex.update_parameters(**self.parameters)
        except ValueError as err:
            raise UsageError(f"bad SLURM setting: {str(err).splitlines()[0]}") from None
        return ex


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise UsageError(f"--seeds {text!r}: give comma-separated integers, e.g. --seeds 18,19,20") from None
    if len(set(seeds)) != len(seeds) or any(not 0 <= s < 2 ** 63 for s in seeds):
        raise UsageError(f"--seeds {text!r}: give distinct seeds in [0, 2**63), e.g. --seeds 18,19,20")
    return seeds


def slurm_settings(opts: argparse.Namespace, output_dir: Path, name: str, distributed: bool = False) -> Slurm:
    """The checked SLURM flags (UsageError naming the flag otherwise); refused where SLURM's tools are missing."""
    missing = [t for t in SLURM_TOOLS if shutil.which(t) is None]
    if missing:
        raise UsageError(f"--launcher slurm needs SLURM, but {' and '.join(missing)} is not on PATH; run it on the "
                         f"cluster's login node, or use --launcher local")
    for flag, value, low in (("gpus-per-node", opts.slurm_gpus_per_node, 0),
                             ("cpus-per-task", opts.slurm_cpus_per_task, 1), ("timeout-min", opts.slurm_timeout_min, 1),
                             ("nodes", opts.slurm_nodes, 1), ("array-parallelism", opts.slurm_array_parallelism, 1)):
        if value is not None and value < low:
            raise UsageError(f"--slurm-{flag} must be at least {low}, got {value}")
    if opts.slurm_mem_gb is not None and not opts.slurm_mem_gb > 0:
        raise UsageError(f"--slurm-mem-gb must be positive, got {opts.slurm_mem_gb}")
    for flag, value in (("partition", opts.slurm_partition), ("account", opts.slurm_account)):
        if value is not None and not re.fullmatch(r"[\w.,:+-]+", value):
            raise UsageError(f"--slurm-{flag} {value!r} is not a SLURM name; give e.g. --slurm-{flag} gpu")
    if opts.slurm_nodes > 1 and not distributed:
        raise UsageError("--slurm-nodes > 1 is for ImageNet/main.py's data-parallel runs; these scripts train on "
                         "one node: drop it")
    gpus = opts.slurm_gpus_per_node
    params = {"job_name": name, "time": opts.slurm_timeout_min, "nodes": opts.slurm_nodes,
              "ntasks_per_node": max(1, gpus or 0) if distributed else 1, "partition": opts.slurm_partition,
              "gpus_per_node": gpus, "cpus_per_task": opts.slurm_cpus_per_task, "account": opts.slurm_account,
              "mem": None if opts.slurm_mem_gb is None else f"{opts.slurm_mem_gb:g}GB",
              "array_parallelism": opts.slurm_array_parallelism}
    extra = {"requeue": True}  # SLURM may requeue it on preemption (it resumes: SLURM_RESTART_COUNT)
    for item in opts.slurm_extra:
        key, eq, value = item.partition("=")
        if not eq or not re.fullmatch(r"[a-z][a-z0-9_-]*", key) or not value:
            raise UsageError(f"--slurm-extra {item!r}: give KEY=VALUE with an sbatch option name, e.g. qos=high")
        extra[key.replace("-", "_")] = value
    params["additional_parameters"] = extra
    slurm = Slurm(output_dir / "slurm", {k: v for k, v in params.items() if v is not None},
                  wait=getattr(opts, "wait", False))
    slurm.executor()  # submitit checks the parameters now, before anything is submitted
    return slurm


# ------------------------------------------------------------------ one job on SLURM
class Member(Checkpointable):
    """A submitit job: ``python SCRIPT ARGV`` in a child process, requeued with --resume on USR2.

    (Checkpointable's protocol: submitit calls checkpoint() on SLURM's warning signal, stores the
    DelayedSubmission it returns in place of the job's, requeues the job and exits.)
    """

    def __init__(self, script: str, argv: list[str], cwd: str, distributed: bool = False):
        self.script, self.argv, self.cwd, self.distributed = script, list(argv), cwd, distributed
        self._proc: subprocess.Popen | None = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state):
        self.__dict__.update(state, _proc=None)

    def resumed(self) -> "Member":
        argv = self.argv if "--resume" in self.argv else [*self.argv, "--resume"]
        return Member(self.script, argv, self.cwd, self.distributed)

    def __call__(self) -> int:
        argv = self.argv
        if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:  # requeued by SLURM itself (preemption)
            argv = self.resumed().argv
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.distributed:  # RANK, WORLD_SIZE, MASTER_ADDR... from SLURM's: the torchrun code path, no torchrun
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            # as torchrun does, threads per process are limited (here: to the task's CPUs) unless set
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env.setdefault("OMP_NUM_THREADS", os.environ.get("SLURM_CPUS_PER_TASK", "1"))
        # the child ignores SLURM's USR2 (meant for submitit here); checkpoint() stops it with SIGTERM
        self._proc = subprocess.Popen([sys.executable, self.script, *argv], cwd=self.cwd, env=env,
                                      preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN))
        code = self._proc.wait()
        if code != 0:
            raise RuntimeError(f"`python {self.script} {' '.join(argv)}` failed (exit {code})")
        return code

    def checkpoint(self, *args, **kwargs) -> DelayedSubmission:
        """SLURM's warning: stop the training (it keeps its last complete checkpoint), go on with --resume."""
        if self._proc is not None:
            stop_child(self._proc.pid)
        return DelayedSubmission(self.resumed())


def stop_child(pid: int, grace_s: float = 120) -> None:
    """SIGTERM, then SIGKILL after grace_s; reaped with os.waitpid, since this runs in a signal handler that may
    have interrupted Popen.wait (which holds a lock a second Popen.wait would wait on forever)."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while os.waitpid(pid, os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.1)
    except (ProcessLookupError, ChildProcessError):  # already ended and reaped
        pass


def submit(executor, members: list[Member]) -> list:
    """One job (or one job array) for the members; their submitit jobs."""
    if len(members) == 1:
        return [executor.submit(members[0])]
    with executor.batch():
        jobs = [executor.submit(m) for m in members]
    return jobs


def wait_for(jobs: list, labels: list[str], poll_s: float = 30) -> None:
    """A line per job as it ends (submitit's result of the job), then a summary; exit code 1 when any failed."""
    pending, failed = dict(zip(jobs, labels)), []
    while pending:
        for job, label in list(pending.items()):
            if not job.done():
                continue
            try:
                error = job.exception()
            except Exception as err:  # ended without a result (cancelled, killed)
                error = err
            outcome = "done" if error is None else "failed: " + (str(error).strip().splitlines() or ["?"])[-1][:200]
            print(f"{job.job_id}  {label}  {outcome}", flush=True)
            if error is not None:
                failed.append(job.job_id)
            del pending[job]
        if pending:
            time.sleep(poll_s)
    print(f"{len(jobs) - len(failed)} of {len(jobs)} jobs done" + (f"; failed: {', '.join(failed)} (their logs are "
                                                                   f"in the slurm/ folder)" if failed else ""))
    if failed:
        raise SystemExit(1)


# ------------------------------------------------------------------ any list of jobs (reproduce_small, demo)
def launch(jobs: list[Job], launcher: str, *, parallel: int = 1, threads: int = 1, log_dir: Path,
           slurm: Slurm | None = None, cwd: Path = REPO, stopped_by: str = "jobs") -> None:
    """Run the jobs here (jobs.run_jobs) or submit them to SLURM: jobs with the same dependencies form one array,
    submitted after the arrays they depend on with ``afterok`` on those jobs' ids."""
    if launcher == "local":
        run_jobs(jobs, parallel, threads, log_dir, stopped_by=stopped_by, cwd=cwd)
        return
    ids: dict[str, str] = {}
    remaining = list(jobs)
    while remaining:
        ready = [j for j in remaining if all(d in ids for d in j.deps)]
        if not ready:
            raise SystemExit(f"unsatisfiable dependencies: {sorted(j.name for j in remaining)}")
        groups: dict[tuple, list[Job]] = {}
        for j in ready:
            groups.setdefault(tuple(sorted(j.deps)), []).append(j)
        for deps, group in groups.items():
            executor = slurm.executor()
            if deps:
                executor.update_parameters(dependency="afterok:" + ":".join(ids[d] for d in deps))
            members = [Member(str(cwd / j.argv[0]), j.argv[1:], str(cwd)) for j in group]
            for job, sub in zip(group, submit(executor, members)):
                ids[job.name] = sub.job_id
                print(f"{sub.job_id}  {job.name}" + (f"  after {','.join(deps)}" if deps else ""), flush=True)
        remaining = [j for j in remaining if j.name not in ids]


# ------------------------------------------------------------------ the entry scripts' hook
def strip_launch_flags(argv: list[str], drop_seed: bool = True) -> list[str]:
    """argv without the launcher flags, and without --seed where a member gets its own."""
    flags = {**LAUNCH_FLAGS, "--seed": True} if drop_seed else LAUNCH_FLAGS
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name, eq, _ = token.partition("=")
        if name in flags:
            skip = flags[name] and not eq
        else:
            out.append(token)
    return out


def member_argvs(argv: list[str], seeds: list[int]) -> list[list[str]]:
    base = strip_launch_flags(argv)
    return [[t.replace("{seed}", str(s)) for t in base] + ["--seed", str(s)] for s in seeds]


def cifar_member(script: str) -> Callable[[list[str]], tuple[Path, Path]]:
    """main_<script>.py's check of one member's flags: (its run folder, the output root)."""
    def check(argv: list[str]) -> tuple[Path, Path]:
        from .recipes import cifar_run_dir, parse

        args, _ = parse(script, argv)
        return cifar_run_dir(script, args), Path(args.output_dir)
    return check


def launch_members(script: str, check: Callable[[list[str]], tuple[Path, Path]] | None = None,
                   argv: list[str] | None = None, distributed: bool = False) -> None:
    """The hook at the top of an entry script: with --seeds or --launcher slurm, start the members (each
    checked first: bad flags stop everything before anything runs) and exit; otherwise return (one run here)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    program = Path(sys.argv[0]).resolve()
    if not any(t.partition("=")[0] in LAUNCH_FLAGS for t in argv):
        return
    opts, _ = launcher_parser().parse_known_args(argv)
    if opts.seeds is None and opts.launcher == "local":
        return
    check = check or cifar_member(script)
    run_cli(lambda _: _launch(program, check, argv, opts, distributed), prog=program.name)
    sys.exit(0)


def _launch(program: Path, check, argv: list[str], opts: argparse.Namespace, distributed: bool) -> None:
    seeds = parse_seeds(opts.seeds) if opts.seeds is not None else [None]
    runs = member_argvs(argv, seeds) if opts.seeds is not None else [strip_launch_flags(argv, drop_seed=False)]
    folders = [check(a) for a in runs]
    output_dir = folders[0][1]
    if opts.launcher == "local":
        if opts.parallel < 1:
            raise UsageError(f"--parallel must be at least 1, got {opts.parallel}")
        jobs = [Job(f"{program.stem}-seed={s}", [str(program), *a]) for s, a in zip(seeds, runs)]
        for job, (run_dir, _) in zip(jobs, folders):
            print(f"{job.name}: {run_dir} (log: {output_dir / 'logs' / (job.name + '.log')})", flush=True)
        n = min(opts.parallel, len(jobs))
        run_jobs(jobs, n, max(1, (os.cpu_count() or 1) // n), output_dir / "logs", stopped_by=program.name,
                 cwd=Path.cwd(), to_resume=TO_RESUME)
        return
    slurm = slurm_settings(opts, output_dir, program.stem, distributed)
    members = [Member(str(program), a, os.getcwd(), distributed) for a in runs]
    jobs = submit(slurm.executor(), members)
    for job, (run_dir, _) in zip(jobs, folders):
        print(f"{job.job_id}  {run_dir}", flush=True)
    print(f"logs: {slurm.log_root}/<job id>/; resubmitting the same command with --resume continues them")
    if slurm.wait:
        wait_for(jobs, [str(f[0]) for f in folders])
