"""--seeds and --launcher: members here (jobs.py's scheduler) and on SLURM through submitit, with stand-in
SLURM commands on PATH that record what they are given (no cluster needed)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, assert_one_line_error, assert_same_run, same, tree_state, write_fashion_mnist
from sparselearning import checkpoint as ckpt
from sparselearning.errors import UsageError
from sparselearning.launch import launcher_parser, member_argvs, slurm_settings

FLAGS = ["--sparse", "--density", "0.2", "--update-frequency", "3", "--model", "cnn-small", "--data", "fashionmnist",
         "--batch-size", "32", "--test-batch-size", "64", "--no-progress"]

# sbatch: keeps each submitted script and prints a job id as SLURM does; the others log their arguments
SBATCH = """#!/bin/sh
n=$(( $(cat "$SLURM_STANDIN/next" 2>/dev/null || echo 4000) + 1 ))
echo $n > "$SLURM_STANDIN/next"
cp "$1" "$SLURM_STANDIN/job-$n.sh"
echo "sbatch $*" >> "$SLURM_STANDIN/calls"
echo "Submitted batch job $n"
"""
RECORDER = """#!/bin/sh
echo "$(basename $0) $*" >> "$SLURM_STANDIN/calls"
"""


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """Stand-ins for sbatch, srun, squeue, sacct, scancel and scontrol on PATH; their record folder."""
    bin_dir, record = tmp_path / "slurm-bin", tmp_path / "slurm-record"
    bin_dir.mkdir()
    record.mkdir()
    for name in ("sbatch", "srun", "squeue", "sacct", "scancel", "scontrol"):
        (bin_dir / name).write_text(SBATCH if name == "sbatch" else RECORDER)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_STANDIN", str(record))
    return record


def submitted(record: Path) -> dict[str, str]:
    """{job id: its sbatch script}"""
    return {p.stem.removeprefix("job-"): p.read_text() for p in sorted(record.glob("job-*.sh"))}


def sbatch_options(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, re.M))


def script(name: str, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / name), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


# ------------------------------------------------------------------ flags (fast)
def test_members_get_their_seed_and_the_seed_in_flags_without_the_launcher_flags():
    argv = ["--pretrained", "dense/seed={seed}/model.pth", "--seed", "5", "--seeds", "18,19", "--launcher=slurm",
            "--slurm-partition", "gpu", "--wait", "--lr", "0.1"]
    assert member_argvs(argv, [18, 19]) == [
        ["--pretrained", "dense/seed=18/model.pth", "--lr", "0.1", "--seed", "18"],
        ["--pretrained", "dense/seed=19/model.pth", "--lr", "0.1", "--seed", "19"]]


def test_seed_is_not_read_as_an_abbreviation_of_seeds():
    opts, rest = launcher_parser().parse_known_args(["--seed", "3"])
    assert opts.seeds is None and rest == ["--seed", "3"]


def slurm_opts(*argv):
    return launcher_parser().parse_args(["--launcher", "slurm", *argv])


@pytest.mark.parametrize("argv, needle", [
    (["--slurm-gpus-per-node", "-1"], "--slurm-gpus-per-node must be at least 0"),
    (["--slurm-timeout-min", "0"], "--slurm-timeout-min must be at least 1"),
    (["--slurm-mem-gb", "0"], "--slurm-mem-gb must be positive"),
    (["--slurm-partition", "a b"], "--slurm-partition 'a b' is not a SLURM name"),
    (["--slurm-extra", "qos"], "--slurm-extra 'qos': give KEY=VALUE"),
    (["--slurm-nodes", "2"], "--slurm-nodes > 1 is for ImageNet/main.py"),
])
def test_bad_slurm_flags_are_refused_by_name(slurm, tmp_path, argv, needle):
    with pytest.raises(UsageError, match=re.escape(needle)):
        slurm_settings(slurm_opts(*argv), tmp_path, "x")
    assert not submitted(slurm)


def test_without_sbatch_the_slurm_launcher_is_one_line_and_exit_2(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # python, no SLURM tools
    before = tree_state(tmp_path)
    r = script("main_DST.py", *FLAGS, "--output-dir", tmp_path / "out", "--seeds", "1,2", "--launcher", "slurm",
               "--slurm-partition", "P", env=env, timeout=300)
    assert_one_line_error(r.returncode, r.stderr, "--launcher slurm needs SLURM", "sbatch", "--launcher local")
    assert tree_state(tmp_path) == before


def test_slurm_flags_without_a_launch_are_refused(tmp_path):
    r = script("main_DST.py", *FLAGS, "--output-dir", tmp_path / "out", "--slurm-partition", "P", timeout=300)
    assert_one_line_error(r.returncode, r.stderr, "--slurm-partition is for launches with --seeds")
    assert not (tmp_path / "out").exists()


def test_members_with_bad_flags_submit_nothing(slurm, tmp_path):
    r = script("main_DST.py", *FLAGS, "--density", "2", "--output-dir", tmp_path / "out", "--seeds", "1,2",
               "--launcher", "slurm", "--slurm-partition", "P", timeout=300)
    assert_one_line_error(r.returncode, r.stderr, "--density")
    assert not submitted(slurm) and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ SLURM through the stand-ins
def test_slurm_members_are_one_job_array_with_partition_gpus_and_requeue(slurm, tmp_path):
    out = tmp_path / "out"
    r = script("main_DST.py", *FLAGS, "--epochs", "2", "--output-dir", out, "--seeds", "1,2", "--launcher", "slurm",
               "--slurm-partition", "P", "--slurm-gpus-per-node", "1", "--slurm-timeout-min", "90",
               "--slurm-extra", "qos=high", timeout=300)
    assert r.returncode == 0, r.stderr
    jobs = submitted(slurm)
    assert list(jobs) == ["4001"]  # one array
    opts = sbatch_options(jobs["4001"])
    assert opts["partition"] == "P" and opts["gpus-per-node"] == "1" and opts["time"] == "90"
    assert opts["array"] == "0-1%2" and opts["qos"] == "high"
    assert opts["signal"] == "USR2@90" and "requeue" in opts  # submitit's warning signal; SLURM may requeue
    assert opts["output"].startswith(str(out / "slurm"))
    run = "cnn-small/fashionmnist/density_0.2/DST"
    assert r.stdout.splitlines()[:2] == [f"4001_0  {out / run / 'seed=1'}", f"4001_1  {out / run / 'seed=2'}"]


def run_submitted_job(folder: Path, job_id: str, task: int, restarts: int = 0) -> subprocess.Popen:
    """What SLURM would start for array task `task` of `job_id` (the stand-in sbatch starts nothing)."""
    env = dict(os.environ, SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID=str(int(job_id) + 1 + task),
               SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=str(task), SLURM_PROCID="0", SLURM_LOCALID="0",
               SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0", SLURM_RESTART_COUNT=str(restarts))
    return subprocess.Popen([sys.executable, "-u", "-m", "submitit.core._submit", str(folder)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_preempted_member_is_requeued_and_resumes_bit_identical(slurm, tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=200, n_test=40)
    flags = [*FLAGS, "--epochs", "8", "--data-dir", str(data)]
    ref = tmp_path / "ref"
    r = script("main_DST.py", *flags, "--seed", "2", "--output-dir", ref, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    r = script("main_DST.py", *flags, "--output-dir", out, "--seeds", "1,2", "--launcher", "slurm",
               "--slurm-partition", "P", timeout=300)
    assert r.returncode == 0, r.stderr
    run = Path("cnn-small/fashionmnist/density_0.2/DST/seed=2")
    job = run_submitted_job(out / "slurm" / "%j", "4001", task=1)
    deadline = time.time() + 300
    while not (out / run / "last.pth").exists():  # epoch 1 is saved: preempt it now
        assert job.poll() is None and time.time() < deadline, job.stdout.read()
        time.sleep(0.02)
    job.send_signal(signal.SIGUSR2)  # SLURM's warning (--signal USR2@90)
    log = job.communicate(timeout=300)[0]
    assert job.returncode != 0 and "Exiting gracefully after preemption/timeout" in log, log[-3000:]
    assert "scontrol requeue 4001_1" in (slurm / "calls").read_text()
    stopped_after = int(ckpt.safe_load(out / run / "last.pth")["epoch"])
    assert stopped_after < 8
    # SLURM starts the requeued task again: the member continues from its last complete epoch
    job = run_submitted_job(out / "slurm" / "%j", "4001", task=1, restarts=1)
    log = job.communicate(timeout=600)[0]
    assert job.returncode == 0, log[-3000:]
    assert f"resumed {out / run} after epoch {stopped_after}" in log
    assert_same_run(out / run, ref / run)


@pytest.mark.slow
def test_local_members_train_then_stopped_members_resume_bit_identical(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=200, n_test=40)
    # --parallel 2 in both: it sets the members' CPU threads, and with them the float rounding
    flags = [*FLAGS, "--epochs", "4", "--data-dir", str(data), "--seeds", "1,2", "--launcher", "local",
             "--parallel", "2"]
    run = Path("cnn-small/fashionmnist/density_0.2/DST")
    ref = tmp_path / "ref"
    r = script("main_DST.py", *flags, "--output-dir", ref, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for seed in (1, 2):
        summary = json.loads((ref / run / f"seed={seed}" / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert ckpt.safe_load(ref / run / f"seed={seed}" / "last.pth")["flags"]["seed"] == seed
    # the same members two at a time, stopped (SIGTERM) once one has saved an epoch, then resumed
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "main_DST.py"), *flags, "--output-dir", str(out)]
    launcher = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not any((out / run / f"seed={s}" / "last.pth").exists() for s in (1, 2)):
        assert launcher.poll() is None and time.time() < deadline, launcher.stdout.read()
        time.sleep(0.02)
    launcher.send_signal(signal.SIGTERM)
    log = launcher.communicate(timeout=120)[0]
    assert launcher.returncode != 0 and "stopped by signal 15" in log and "plus --resume" in log, log[-3000:]
    epochs = [int(ckpt.safe_load(p)["epoch"]) for p in (out / run).glob("seed=*/last.pth")]
    assert min(epochs) < 4  # stopped before the end
    r = subprocess.run([*cmd, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for seed in (1, 2):
        assert_same_run(out / run / f"seed={seed}", ref / run / f"seed={seed}")


def test_reproduce_small_submits_its_runs_with_their_dependencies(slurm, tmp_path, capsys):
    from test_benchmarks import load

    rs = load("reproduce_small")
    out = tmp_path / "rs"
    rs.main(["--quick", "--output-dir", str(out), "--launcher", "slurm", "--slurm-partition", "P"])
    ids = {}  # job name -> SLURM job id, from the printed lines
    for line in capsys.readouterr().out.splitlines():
        m = re.fullmatch(r"(\d+(?:_\d+)?)  (r\d-[\w-]+)(?:  after .*)?", line)
        if m:
            ids[m.group(2)] = m.group(1)
    plan = rs.make_plan(rs.build_arg_parser(), rs.build_arg_parser().parse_args(["--quick", "--output-dir", str(out)]))
    names = [j.name for j in rs.build_jobs(plan)]
    assert sorted(ids) == sorted(names)
    scripts = submitted(slurm)
    dependency = {job_id: sbatch_options(text).get("dependency") for job_id, text in scripts.items()}
    assert all(sbatch_options(text)["partition"] == "P" for text in scripts.values())

    def dep_of(name: str) -> str | None:
        return dependency[ids[name].split("_")[0]]

    seeds = plan.seeds(0)
    for s in seeds:  # every PF member waits for its own dense model
        assert dep_of(f"r0-PF-s{s}") == f"afterok:{ids[f'r0-dense-s{s}']}"
        assert dep_of(f"r0-dense-s{s}") is None and dep_of(f"r0-DST-s{s}") is None
    assert sorted(dep_of("r0-eval-PF").removeprefix("afterok:").split(":")) == sorted(
        ids[f"r0-PF-s{s}"] for s in seeds)
    assert not list(out.glob("rep*/**/summary.json"))  # nothing ran here


# ------------------------------------------------------------------ ImageNet: one SLURM job of N nodes x G processes
def test_imagenet_is_one_job_of_nodes_times_gpus(slurm, tmp_path):
    from test_imagenet import COMMON, MAIN, write_image_folder

    data = write_image_folder(tmp_path / "data", train_per_class=2, val_per_class=1)
    r = subprocess.run([sys.executable, str(MAIN), *COMMON, "--output-dir", str(tmp_path / "out"), str(data),
                        "--launcher", "slurm", "--slurm-nodes", "2", "--slurm-gpus-per-node", "4",
                        "--slurm-partition", "P"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (job_id, script_text), = submitted(slurm).items()
    opts = sbatch_options(script_text)
    assert (opts["nodes"], opts["ntasks-per-node"], opts["gpus-per-node"]) == ("2", "4", "4")
    assert "array" not in opts and r.stdout.startswith(f"{job_id}  {tmp_path / 'out'}")


@pytest.mark.slow
def test_imagenet_job_sets_up_ddp_from_slurm_and_trains_as_torchrun_does(slurm, tmp_path):
    """The two processes SLURM would start (no torchrun): the same tickets as a torchrun run of 2 processes."""
    from test_imagenet import COMMON, MAIN, RUN_DIR, torchrun, write_image_folder

    data = write_image_folder(tmp_path / "data")
    ref = tmp_path / "ref"
    r = torchrun(*COMMON, "--output-dir", ref, data)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(MAIN), *COMMON, "--output-dir", str(out), str(data), "--launcher",
                        "slurm", "--slurm-gpus-per-node", "2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (job_id, _), = submitted(slurm).items()
    tasks = []
    for rank in (0, 1):
        env = dict(os.environ, SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID=job_id, SLURM_PROCID=str(rank),
                   SLURM_LOCALID=str(rank), SLURM_NTASKS="2", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0",
                   SLURM_JOB_NODELIST="localhost", SLURM_CPUS_PER_TASK="1")  # 1 thread each, as torchrun's
        tasks.append(subprocess.Popen([sys.executable, "-u", "-m", "submitit.core._submit", str(out / "slurm" / "%j")],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [t.communicate(timeout=600)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    names = sorted(p.name for p in (ref / RUN_DIR).glob("model_*.pth"))
    assert names == sorted(p.name for p in (out / RUN_DIR).glob("model_*.pth")) and names
    for name in names:
        a, b = ckpt.load_ticket(ref / RUN_DIR / name), ckpt.load_ticket(out / RUN_DIR / name)
        assert same(ckpt.ticket_state_dict(a), ckpt.ticket_state_dict(b)), name
        assert same(ckpt.ticket_masks(a), ckpt.ticket_masks(b)), name


class FinishedJob:
    """What wait_for reads of a submitit job."""

    def __init__(self, job_id, error=None, done_after=0):
        self.job_id, self.error, self.polls = job_id, error, done_after

    def done(self):
        self.polls -= 1
        return self.polls < 0

    def exception(self):
        return self.error


def test_wait_prints_a_line_per_member_as_it_ends_and_a_summary(capsys):
    from sparselearning.launch import wait_for

    jobs = [FinishedJob("7_0", done_after=1), FinishedJob("7_1", RuntimeError("Traceback...\nexit 2"))]
    with pytest.raises(SystemExit) as exc:
        wait_for(jobs, ["seed=1", "seed=2"], poll_s=0)
    assert exc.value.code == 1
    assert capsys.readouterr().out.splitlines() == [
        "7_1  seed=2  failed: exit 2", "7_0  seed=1  done", "1 of 2 jobs done; failed: 7_1 (their logs are in the "
                                                             "slurm/ folder)"]
