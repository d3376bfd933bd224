"""benchmarks/gpu_check.py and gpu_check.sh: the dry run on the CPU (so the GPU check cannot rot), the host-sync
counter, per-section limits, the wrapper's logic, and the checks that need CUDA (marked ``cuda``; skipped without
a GPU). No wall-clock figure is asserted: the sections' figures are checked for what they say."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from helpers import REPO, assert_one_line_error, load_module, run_script
from sparselearning.errors import UsageError


def on_cuda(test):
    """Marked ``cuda`` (gpu_check.sh runs ``pytest -m cuda``) and skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@pytest.fixture(scope="module")
def gc():
    return load_module(REPO / "benchmarks" / "gpu_check.py", "gpu_check")


@pytest.fixture(scope="module")
def sc():
    return load_module(REPO / "benchmarks" / "sync_counter.py", "sync_counter")


# ---------------------------------------------------------------------------------- the host-sync counter
def test_host_sync_counter_counts_each_call_once_and_restores_torch(sc):
    t = torch.tensor([1.5, -2.0])
    originals = {name: torch.Tensor.__dict__.get(name) for name in sc.HostSyncCounter.TENSOR_METHODS}
    with sc.HostSyncCounter() as syncs:
        t[0].item()
        t.tolist()
        t.cpu()
        float(t[1])
        if t[0] > 0:  # __bool__
            pass
        f"{t[1]:.1f}"  # Tensor.__format__ calls .item() inside: one count, not two
        t.sum().numpy()
        t[t > 0]  # boolean-mask indexing (a nonzero inside)
        torch.nonzero(t)
        torch.equal(t, t)
        t.to(torch.float64)  # a dtype change on the same device: no copy to the host
    assert dict(syncs.counts) == {"item": 1, "tolist": 1, "cpu": 1, "__float__": 1, "__bool__": 1,
                                  "__format__": 1, "numpy": 1, "__getitem__": 1, "torch.nonzero": 1,
                                  "torch.equal": 1}
    assert syncs.on_device == 0  # all on CPU tensors: none would wait for a GPU
    assert {name: torch.Tensor.__dict__.get(name) for name in originals} == originals
    t[0].item()
    assert syncs.total == 10  # no longer counting


def test_host_sync_counter_restores_torch_after_an_error(sc):
    before = torch.Tensor.__dict__.get("item")
    with pytest.raises(ZeroDivisionError):
        with sc.HostSyncCounter():
            1 / 0
    assert torch.Tensor.__dict__.get("item") is before and "nonzero" not in vars(torch.Tensor)


# ---------------------------------------------------------------------------------- the dry run
@pytest.mark.slow
def test_dry_run_executes_every_section_on_the_cpu(gc, tmp_path):
    proc = run_script("benchmarks/gpu_check.py", "--dry-run", "--out", tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "time budget" in proc.stdout and all(f"{name} " in proc.stdout for name in gc.SECTIONS)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == list(gc.SECTIONS)
    assert list(gc.SECTIONS)[:5] == ["fp16_overflow", "masks_identical", "host_syncs", "ddp", "ddp_engine"]
    assert list(gc.SECTIONS)[-1] == "compile"
    bad = {n: r.get("error") for n, r in sections.items() if r["status"] != "ok"}
    assert not bad, bad
    overflow = sections["fp16_overflow"]
    # torch's GradScaler skips a step with an inf gradient and halves the scale (its documented behaviour);
    # Masking must neither count it nor update the topology; the next finite step runs the due update
    assert overflow["scale_after"] == overflow["scale_before"] / 2
    assert overflow["steps_counted"] == 0 and overflow["topology_update_ran"] is False
    assert overflow["mask_entries_changed"] == 0 and overflow["params_changed"] == 0
    assert overflow["next_step_counted"] is True and overflow["next_step_ran_update"] is True
    for name in ("channels_last", "compile"):
        assert all(sections[name][k]["images_per_s"] > 0 for k in ("off", "on"))
    wrn = sections["throughput_wrn"]
    assert wrn["sparse"]["update_frequency"] == 1000 and wrn["sparse"]["update_step_ms"] > 0
    assert "bf16_skipped" in sections["throughput_resnet50"] and "skipped" in sections["amp"]
    syncs = sections["host_syncs"]
    assert syncs["sparse_plain_step"]["python_calls_per_step"] == syncs["dense"]["python_calls_per_step"]
    assert syncs["sparse_update_step"]["python_calls_per_step"] > syncs["sparse_plain_step"]["python_calls_per_step"]
    assert sections["ddp"]["backend"] == "gloo" and sections["ddp"]["masks_in_sync"] is True
    assert sections["ddp"]["all_reduce_ok"] is True and sections["ddp"]["topology_updates"] > 0
    engine = sections["ddp_engine"]
    assert engine["backend"] == "gloo" and engine["processes"] == 2 and engine["mask_checks_logged"] >= 2
    masks = sections["masks_identical"]
    assert masks["identical"] is True and masks["per_layer_counts_kept"] is True
    assert "use_deterministic_algorithms" in masks["settings"]
    pipe = sections["imagenet_pipeline"]
    assert pipe["images"] == 12 and all(pipe[d]["all_images_seen"] and pipe[d]["images_per_s"] > 0
                                        for d in ("pil", "gpu"))
    e2e = sections["end_to_end"]
    assert e2e["dense"]["steps"] == e2e["sparse"]["steps"] > 0 and e2e["sparse_over_dense"] > 0
    md = (tmp_path / "gpu_check.md").read_text()
    assert all(f"**{name}**" in md for name in gc.SECTIONS)


def test_unknown_section_is_a_one_line_error(gc, tmp_path):
    with pytest.raises(UsageError) as err:
        gc.main(["--dry-run", "--sections", "ddp,warp", "--out", str(tmp_path / "o")])
    assert "--sections" in str(err.value) and "warp" in str(err.value) and "throughput_wrn" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_without_cuda_it_asks_for_dry_run_as_a_one_line_error(tmp_path):
    proc = run_script("benchmarks/gpu_check.py", "--out", tmp_path / "o")  # as a user runs it: exit 2, one line
    assert_one_line_error(proc.returncode, proc.stderr, "--dry-run")
    assert not (tmp_path / "o").exists()


def _run_sections_fresh(tmp_path, patch: str, names: list[str], limits: str = "None") -> dict:
    """run_sections in a fresh interpreter, after `patch` (code that replaces parts of the module `gc`).

    Sections run in forked processes; a fork from this pytest process, whose OpenMP threads earlier tests used,
    can deadlock in the child (libgomp is not fork-safe), so the parent must be a process that computed nothing:
    as in the real driver."""
    code = (f"import importlib.util, json, sys, torch\n"
            f"spec = importlib.util.spec_from_file_location('gpu_check', {str(REPO / 'benchmarks' / 'gpu_check.py')!r})\n"
            f"gc = importlib.util.module_from_spec(spec); sys.modules['gpu_check'] = gc; spec.loader.exec_module(gc)\n"
            f"{patch}\n"
            f"cfg = gc.Config.for_run(True, torch.device('cpu'), 0)\n"
            f"from pathlib import Path\n"
            f"report = gc.run_sections(cfg, {names!r}, Path({str(tmp_path)!r}), limits={limits})\n"
            f"print('REPORT ' + json.dumps(report['sections']))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.split("REPORT ", 1)[1])


def test_failing_section_is_reported_and_the_others_still_run(tmp_path):
    patch = ("def broken(cfg):\n    raise RuntimeError('boom')\n"
             "def hangs(cfg):\n    import time; time.sleep(600)\n"
             "gc.section_ddp = broken; gc.section_masks_identical = hangs")
    sections = _run_sections_fresh(tmp_path, patch, ["ddp", "masks_identical", "fp16_overflow"],
                                   limits='{"ddp": 1800, "masks_identical": 3, "fp16_overflow": 1800}')
    assert sections["ddp"]["status"] == "error" and "boom" in sections["ddp"]["error"]
    assert sections["masks_identical"]["status"] == "timeout"
    assert sections["fp16_overflow"]["status"] == "ok"
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())
    assert on_disk["sections"]["ddp"]["status"] == "error"


def test_fp16_section_fails_for_a_masking_that_updates_on_a_skipped_step(tmp_path):
    """The old call, masking.step(lambda: scaler.step(opt)): the scaler skips the step, but Masking counts it
    and runs its topology update: the section must say "fail"."""
    patch = ("class OldCallMasking(gc.Masking):\n"
             "    def step(self, optimizer_step=None, scaler=None):\n"
             "        if scaler is None:\n"
             "            return super().step(optimizer_step)\n"
             "        return super().step(lambda: scaler.step(self.optimizer))\n"
             "gc.Masking = OldCallMasking")
    result = _run_sections_fresh(tmp_path, patch, ["fp16_overflow"])["fp16_overflow"]
    assert result["status"] == "fail", result
    assert "topology_update_ran" in result["error"] and "steps_counted" in result["error"]


# ---------------------------------------------------------------------------------- gpu_check.sh
def _stub_python(tmp_path, pytest_rc: int, driver_rc: int):
    """A PYTHON for gpu_check.sh that logs its arguments and exits with the given codes."""
    log = tmp_path / "calls.txt"
    stub = tmp_path / "python_stub"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{log}"\n'
                    f'if [ "$1" = "-m" ]; then exit {pytest_rc}; else exit {driver_rc}; fi\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return stub, log


@pytest.mark.parametrize("pytest_rc,driver_rc,want", [(0, 0, 0), (5, 0, 0), (1, 0, 1), (0, 1, 1)])
def test_gpu_check_sh_runs_cuda_tests_then_the_driver(tmp_path, pytest_rc, driver_rc, want):
    stub, log = _stub_python(tmp_path, pytest_rc, driver_rc)
    env = dict(os.environ, PYTHON=str(stub), OUT=str(tmp_path / "out"))
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == want, proc.stdout + proc.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "-m pytest -q -m cuda -p no:cacheprovider tests"
    assert calls[1] == f"benchmarks/gpu_check.py --out {tmp_path / 'out'} --dry-run"  # the driver runs even after
    assert (tmp_path / "out" / "pytest_cuda.txt").exists() and (tmp_path / "out" / "gpu_check.log").exists()


def test_gpu_check_sh_defaults_to_gpu_check_out(tmp_path):
    stub, log = _stub_python(tmp_path, 0, 0)
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["PYTHON"] = str(stub)
    work = tmp_path / "here"
    work.mkdir()
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines()[1] == f"benchmarks/gpu_check.py --out {work / 'gpu_check_out'}"


def test_gpu_check_sh_sets_the_project_up_when_venv_is_missing(tmp_path):
    """A fresh clone: no .venv, so `make setup`, then .venv/bin/python runs the tests and the driver."""
    clone = tmp_path / "clone"
    (clone / "benchmarks").mkdir(parents=True)
    (clone / "benchmarks" / "gpu_check.sh").write_text((REPO / "benchmarks" / "gpu_check.sh").read_text())
    (clone / "python_stub").write_text(f'#!/usr/bin/env bash\necho "$*" >> "{clone / "calls.txt"}"\n')
    (clone / "Makefile").write_text("setup:\n\tmkdir -p .venv/bin && cp python_stub .venv/bin/python "
                                    "&& chmod +x .venv/bin/python\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHON")}
    proc = subprocess.run(["bash", str(clone / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "make setup" in proc.stdout
    calls = (clone / "calls.txt").read_text().splitlines()
    assert calls[0].startswith("-m pytest") and calls[1].startswith("benchmarks/gpu_check.py")


# ---------------------------------------------------------------------------------- on a GPU
@pytest.fixture
def cuda_cfg(gc):
    return gc.Config.for_run(True, torch.device("cuda", torch.cuda.current_device()), 0)


@on_cuda
def test_counter_and_sync_debug_mode_see_a_real_cuda_sync(sc):
    t = torch.ones(1000, device="cuda")
    with sc.cuda_sync_warnings() as cuda_syncs, sc.HostSyncCounter() as syncs:
        t.sum().item()
        (t * 2).cpu()
        t.to("cpu")
    assert syncs.device_counts["item"] == 1 and syncs.device_counts["cpu"] == 1 and syncs.device_counts["to"] == 1
    assert len(cuda_syncs) >= 2  # torch's own sync detector agrees


@on_cuda
def test_fp16_skipped_step_is_not_counted_on_cuda(gc, cuda_cfg):
    res = gc.section_fp16_overflow(cuda_cfg)  # raises CheckFailed if Masking counted or updated the skipped step
    assert res["precision"] == "fp16 autocast" and res["params_changed"] == 0


@on_cuda
def test_ddp_over_nccl_at_world_size_one_keeps_masks_in_sync(gc, cuda_cfg):
    res = gc.section_ddp(cuda_cfg)
    assert res["backend"] == "nccl" and res["all_reduce_ok"] and res["masks_in_sync"] and res["topology_updates"] > 0


@on_cuda
def test_random_growth_draws_on_the_device_and_repeats_for_the_same_generator():
    from sparselearning.core import growth

    mask = torch.rand(1000, device="cuda") < 0.3
    a = growth.random_growth(mask, 50, torch.Generator().manual_seed(3))
    b = growth.random_growth(mask, 50, torch.Generator().manual_seed(3))
    assert a.device.type == "cuda" and torch.equal(a, b)
    assert int(a.sum()) == int(mask.sum()) + 50 and bool((a | ~mask).all()) and bool(a[mask].all())


@on_cuda
def test_fused_masked_step_equals_the_eager_one_on_cuda():
    from sparselearning.core.fused_step import MaskedStep

    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(64, 32, device="cuda"))
        mask = torch.rand(64, 32, device="cuda") < 0.3
        with torch.no_grad():
            p.mul_(mask)
        opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=5e-4)
        for step in range(4):
            g = torch.randn(64, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(step))
            p.grad = g.clone() if fused else g * mask
            MaskedStep(opt).step({p: mask}) if fused else opt.step()
        results.append(p.detach().clone())
    assert torch.equal(*results)
