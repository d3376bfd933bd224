"""benchmarks/gpu_check.py and gpu_check.sh: the dry run on the CPU (so the GPU check cannot rot), the host-sync
counter, the wrapper's logic, and the checks that need CUDA (marked ``cuda``; skipped without a GPU)."""
from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from helpers import REPO, assert_one_line_error, run_script
from sparselearning.errors import UsageError


def on_cuda(test):
    """Marked ``cuda`` (gpu_check.sh runs ``pytest -m cuda``) and skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@pytest.fixture(scope="module")
def gc():
    """benchmarks/gpu_check.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------- the host-sync counter
def test_host_sync_counter_counts_each_call_once_and_restores_torch(gc):
    t = torch.tensor([1.5, -2.0])
    originals = {name: torch.Tensor.__dict__.get(name) for name in gc.HostSyncCounter.TENSOR_METHODS}
    with gc.HostSyncCounter() as syncs:
        t[0].item()
        t.tolist()
        t.cpu()
        float(t[1])
        if t[0] > 0:  # __bool__
            pass
        f"{t[1]:.1f}"  # Tensor.__format__ calls .item() once (Python level): one count, not more
        t.sum().numpy()
    assert dict(syncs.counts) == {"item": 2, "tolist": 1, "cpu": 1, "__float__": 1, "__bool__": 1, "numpy": 1}
    assert syncs.total == 7
    assert syncs.on_device == 0  # all on CPU tensors: none would wait for a GPU
    assert {name: torch.Tensor.__dict__.get(name) for name in originals} == originals
    t[0].item()
    assert syncs.total == 7  # no longer counting


def test_host_sync_counter_restores_torch_after_an_error(gc):
    before = torch.Tensor.__dict__.get("item")
    with pytest.raises(ZeroDivisionError):
        with gc.HostSyncCounter():
            1 / 0
    assert torch.Tensor.__dict__.get("item") is before


# ---------------------------------------------------------------------------------- the dry run
@pytest.mark.slow
def test_dry_run_executes_every_section_on_the_cpu(gc, tmp_path):
    proc = run_script("benchmarks/gpu_check.py", "--dry-run", "--out", tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == list(gc.SECTIONS)
    bad = {n: r.get("error") for n, r in sections.items() if r["status"] != "ok"}
    assert not bad, bad
    assert report["dry_run"] is True and report["total_s"] < 60
    for name in ("throughput_wrn", "channels_last", "compile"):
        res = sections[name]
        pairs = (res["dense"], res["sparse"]) if name == "throughput_wrn" else (res["off"], res["on"])
        assert all(p["images_per_s"] > 0 for p in pairs)
    assert sections["throughput_wrn"]["sparse"]["topology_updates_timed"] == 1  # updates are inside the timing
    assert "bf16_skipped" in sections["throughput_resnet50"] and "skipped" in sections["amp"]
    syncs = sections["host_syncs"]
    assert syncs["sparse_update_step"]["python_calls_per_step"] >= syncs["sparse_plain_step"]["python_calls_per_step"]
    assert sections["ddp"]["backend"] == "gloo" and sections["ddp"]["masks_in_sync"] is True
    assert sections["ddp"]["all_reduce_ok"] is True and sections["ddp"]["topology_updates"] > 0
    masks = sections["masks_identical"]
    assert masks["identical"] is True and masks["per_layer_counts_kept"] is True  # the CPU is deterministic
    overflow = sections["fp16_overflow"]
    # torch's GradScaler skips a step with an inf gradient and halves the scale (its documented behaviour)
    assert overflow["scaler_skipped_step"] is True and overflow["scale_after"] == overflow["scale_before"] / 2
    assert overflow["dense_params_changed"] == 0
    assert isinstance(overflow["topology_update_ran"], bool)  # reported, whatever Masking does today
    assert sections["imagenet_pipeline"]["images_per_s"] > 0 and sections["imagenet_pipeline"]["images"] == 12
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


def test_failing_section_is_reported_and_the_others_still_run(gc, tmp_path, monkeypatch):
    def broken(cfg):
        raise RuntimeError("boom")

    monkeypatch.setattr(gc, "section_ddp", broken)
    cfg = gc.Config.for_run(True, torch.device("cpu"), 0)
    report = gc.run_sections(cfg, ["ddp", "fp16_overflow"], tmp_path)
    assert report["sections"]["ddp"]["status"] == "error" and "boom" in report["sections"]["ddp"]["error"]
    assert report["sections"]["fp16_overflow"]["status"] == "ok"
    on_disk = json.loads((tmp_path / "gpu_check.json").read_text())
    assert on_disk["sections"]["ddp"]["status"] == "error"


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


# ---------------------------------------------------------------------------------- on a GPU
@pytest.fixture
def cuda_cfg(gc):
    return gc.Config.for_run(True, torch.device("cuda", torch.cuda.current_device()), 0)


@on_cuda
def test_counter_and_sync_debug_mode_see_a_real_cuda_sync(gc):
    t = torch.ones(1000, device="cuda")
    with gc.cuda_sync_warnings() as cuda_syncs, gc.HostSyncCounter() as syncs:
        t.sum().item()
        (t * 2).cpu()
    assert syncs.device_counts["item"] == 1 and syncs.device_counts["cpu"] == 1 and syncs.on_device == 2
    assert len(cuda_syncs) >= 2  # torch's own sync detector agrees


@on_cuda
def test_fp16_scaler_skips_an_overflowing_step_on_cuda(gc, cuda_cfg):
    res = gc.section_fp16_overflow(cuda_cfg)
    assert res["precision"] == "fp16 autocast"
    assert res["scaler_skipped_step"] is True and res["dense_params_changed"] == 0


@on_cuda
def test_ddp_over_nccl_at_world_size_one_keeps_masks_in_sync(gc, cuda_cfg):
    res = gc.section_ddp(cuda_cfg)
    assert res["backend"] == "nccl" and res["all_reduce_ok"] and res["masks_in_sync"] and res["topology_updates"] > 0


@on_cuda
def test_sparse_training_on_cuda_keeps_each_layers_weight_count(gc, cuda_cfg):
    res = gc.section_masks_identical(cuda_cfg)
    assert res["topology_updates"] == 3 and res["per_layer_counts_kept"] is True
