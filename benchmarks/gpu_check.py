"""The GPU check: one run that measures what only a GPU can tell, with the project's own pieces.

Sections, in this order (correctness first, then throughput, compile last). Each runs in its own forked
process under its own time limit: one that fails, hangs or runs out of time is reported ("fail", "error",
"timeout") and the others still run. The parent never initialises CUDA (NVML answers whether a GPU is
there), so every section starts with a fresh CUDA context.

- fp16_overflow        a GradScaler fp16 step with one gradient set to inf through Masking.step(scaler=):
                       asserts the step is skipped, not counted, runs no topology update, changes no mask or
                       weight; the next finite step runs the due update
- masks_identical      two runs from one seed on the device under torch.use_deterministic_algorithms: identical
                       masks after three topology updates
- host_syncs           host-waiting calls per training step (dense, sparse, sparse update step), counted by
                       sync_counter.HostSyncCounter and CUDA's sync debug mode
- ddp                  DistributedDataParallel over NCCL at world size 1 around the engine's loop (on the CPU:
                       gloo); then ddp_engine: the engine itself (ImageNet/main.py under torchrun) in 2 processes
- throughput_wrn       dense vs sparse training, WRN-28-10 at CIFAR shapes, fp32 with the engine's settings
                       (TF32, cudnn autotuning); the sparse figure includes one topology update per 1000 steps
                       (the default update frequency): the update step is timed apart and amortised
- throughput_resnet50  dense vs sparse, torchvision ResNet-50 at 224, fp32 and bf16 (each alone)
- amp                  fp32 (engine settings) vs bf16 autocast, WRN dense and sparse: precision alone changes
- channels_last        channels-last on vs off, WRN sparse: memory format alone changes
- imagenet_pipeline    images/s of the ImageNet data path, --decode pil vs --decode gpu
- end_to_end           the engine (main_individual.py) dense vs --sparse for a few hundred steps: the user's figure
- compile              torch.compile on/off (WRN sparse), compile time apart

Everything comes from inside the machine (generated tensors, images and CIFAR files). ``--dry-run`` runs
every section on the CPU at tiny shapes, so the test suite keeps this script working; bf16 is skipped
there (the engine's --amp is CUDA-only) and torch.compile uses the "eager" backend.

    python benchmarks/gpu_check.py --out gpu_check_out          # on a GPU (estimates: RESULTS.md)
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc      # anywhere

Writes ``gpu_check.json`` (all figures) and ``gpu_check.md`` (tables for benchmarks/RESULTS.md) into --out,
rewritten after every section so a run cut short still leaves what it measured.
"""
from __future__ import annotations

import os

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() without a CUDA context: fork stays safe

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "benchmarks"):  # run as a script from anywhere
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import gpu_check_engine as engine  # noqa: E402
from gpu_check_engine import CheckFailed, free_port  # noqa: E402
from models import get_model, imagenet_resnet  # noqa: E402
from models.wide_resnet import WideResNet  # noqa: E402
from sparselearning.core.distributed import assert_masks_in_sync, mask_checksum, masks_in_sync  # noqa: E402
from sparselearning.core.masking import Masking  # noqa: E402
from sparselearning.errors import UsageError, run_cli  # noqa: E402
from sparselearning.loop import autocast_context, speed_settings, train_one_epoch  # noqa: E402
from sparselearning.provenance import machine_info  # noqa: E402
from sync_counter import HostSyncCounter, cuda_sync_warnings  # noqa: E402

# name: (estimate on one H100, time limit), seconds; the estimates are RESULTS.md's
BUDGET = {
    "fp16_overflow": (10, 60), "masks_identical": (15, 90), "host_syncs": (15, 90), "ddp": (15, 90),
    "ddp_engine": (25, 120), "throughput_wrn": (25, 120), "throughput_resnet50": (30, 150), "amp": (30, 150),
    "channels_last": (20, 120), "imagenet_pipeline": (20, 120), "end_to_end": (40, 240), "compile": (55, 240),
}
SECTIONS = tuple(BUDGET)
TESTS_ESTIMATE_S = 45  # pytest -m cuda in gpu_check.sh
DRY_RUN_LIMIT_S = 900


# ---------------------------------------------------------------------------------- configuration
@dataclasses.dataclass
class Config:
    device: torch.device
    dry_run: bool
    wrn: tuple[int, int]  # depth, widen
    wrn_batch: int
    wrn_steps: int
    resnet: str
    resnet_size: int
    resnet_batch: int
    resnet_steps: int
    warmup: int
    density: float
    sync_steps: int
    pipeline_images_per_class: int
    pipeline_image_shape: tuple[int, int]  # height, width of the written JPEGs
    pipeline_size: int
    pipeline_batch: int
    workers: int
    compile_backend: str
    update_frequency: int = 1000  # the engine's default (--update-frequency)

    @classmethod
    def for_run(cls, dry_run: bool, device: torch.device, workers: int | None) -> "Config":
        if dry_run:
            return cls(device, True, (10, 1), 4, 3, "resnet18", 32, 2, 2, 1, 0.2, 3, 6, (40, 48), 32, 4,
                       0 if workers is None else workers, "eager")  # workers: the fork server alone takes ~10 s
        return cls(device, False, (28, 10), 128, 50, "resnet50", 224, 64, 25, 8, 0.2, 10, 160, (375, 500),
                   224, 32, min(8, os.cpu_count() or 1) if workers is None else workers, "inductor")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bf16_supported(cfg: Config) -> bool:
    return cfg.device.type == "cuda" and torch.cuda.is_bf16_supported()


def _no_bf16_reason(cfg: Config) -> str:
    return ("bf16 autocast is CUDA-only in the engine (--amp); not measured on the CPU" if cfg.device.type != "cuda"
            else "this GPU has no bf16")


def _limit(cfg: Config, name: str) -> float:
    """A section's time limit: the GPU one, or on the dry run's CPU (possibly shared, far slower) at least
    DRY_RUN_LIMIT_S."""
    return max(BUDGET[name][1], DRY_RUN_LIMIT_S) if cfg.dry_run else BUDGET[name][1]


# ---------------------------------------------------------------------------------- one training measurement
@dataclasses.dataclass
class Setup:
    model: torch.nn.Module  # what is called (possibly compiled)
    optimizer: torch.optim.Optimizer
    masking: Masking | None
    batches: list
    autocast: Callable
    scaler: object


def build_setup(cfg: Config, kind: str, *, sparse: bool, bf16: bool = False, channels_last: bool = False,
                compiled: bool = False, update_frequency: int | None = None, batches: int = 4) -> Setup:
    """A model of `kind` ("wrn" or "resnet") on the device with its optimizer, Masking and synthetic batches,
    under the engine's speed settings (TF32, cudnn autotuning) unless deterministic settings are on."""
    if not torch.are_deterministic_algorithms_enabled():
        speed_settings(cfg.device, note=None)
    torch.manual_seed(0)
    if kind == "wrn":
        depth, widen = cfg.wrn
        model = (get_model(f"wrn-{depth}-{widen}", num_classes=10) if not cfg.dry_run
                 else WideResNet(depth, widen, num_classes=10))
        batch, size, classes = cfg.wrn_batch, 32, 10
    else:
        model = imagenet_resnet(cfg.resnet, num_classes=1000)
        batch, size, classes = cfg.resnet_batch, cfg.resnet_size, 1000
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(cfg.device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    masking = None
    if sparse:
        masking = Masking(optimizer, death_rate=0.5, growth_mode="gradient", death_rate_schedule="cosine",
                          total_steps=10_000, update_frequency=update_frequency or cfg.update_frequency, seed=0)
        masking.add_module(model, density=cfg.density, sparse_init="ERK")
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(batch, 3, size, size, generator=gen).to(cfg.device).contiguous(memory_format=fmt),
             torch.randint(0, classes, (batch,), generator=gen).to(cfg.device)) for _ in range(batches)]
    if bf16:
        autocast, scaler = (lambda: torch.autocast(cfg.device.type, dtype=torch.bfloat16)), None
    else:
        autocast, scaler = autocast_context(cfg.device, False)
    called = torch.compile(model, backend=cfg.compile_backend) if compiled else model
    return Setup(called, optimizer, masking, data, autocast, scaler)


def run_steps(s: Setup, steps: int) -> None:
    batches = list(itertools.islice(itertools.cycle(s.batches), steps))
    train_one_epoch(s.model, batches, s.optimizer, s.masking, None, autocast=s.autocast, scaler=s.scaler,
                    progress=False)


def _timed_steps(cfg: Config, s: Setup, steps: int) -> float:
    _sync(cfg.device)
    start = time.perf_counter()
    run_steps(s, steps)
    _sync(cfg.device)
    return time.perf_counter() - start


def measure(cfg: Config, kind: str, *, steps: int, **setup_kwargs) -> dict:
    """images/s of `steps` training steps after cfg.warmup untimed ones (warm-up time reported apart).

    Sparse: the window holds no topology update; one update step is timed apart and its extra time is
    spread over the update frequency (``images_per_s`` is that amortised figure, ``window_images_per_s``
    the window's own)."""
    s = build_setup(cfg, kind, **setup_kwargs)
    warmup = _timed_steps(cfg, s, cfg.warmup)
    seconds = _timed_steps(cfg, s, steps)
    batch = s.batches[0][0].shape[0]
    step_s = seconds / steps
    out = {"images_per_s": round(batch / step_s, 1), "ms_per_step": round(1000 * step_s, 2),
           "warmup_s": round(warmup, 2), "steps": steps, "batch": batch}
    if s.masking:
        freq = s.masking.update_frequency
        s.masking.steps = freq - 1 - (s.masking.steps % freq == freq - 1)  # the next step is an update step
        updates = s.masking.num_updates
        update_step_s = _timed_steps(cfg, s, 1)
        if s.masking.num_updates != updates + 1:
            raise CheckFailed("the step timed as the topology update step ran no update")
        amortised = step_s + max(update_step_s - step_s, 0.0) / freq
        out.update(window_images_per_s=out["images_per_s"], images_per_s=round(batch / amortised, 1),
                   update_step_ms=round(1000 * update_step_s, 1), update_frequency=freq,
                   density=round(s.masking.density(), 4))
    if cfg.device.type == "cuda":
        out["max_memory_gib"] = round(torch.cuda.max_memory_allocated(cfg.device) / 2 ** 30, 2)
        torch.cuda.reset_peak_memory_stats(cfg.device)
    return out


def ratio(a: dict, b: dict) -> float:
    return round(a["images_per_s"] / b["images_per_s"], 3)


# ---------------------------------------------------------------------------------- correctness sections
def section_fp16_overflow(cfg: Config) -> dict:
    """An update step whose fp16 gradient overflows, through Masking.step(scaler=): the scaler must skip it,
    Masking must not count it nor update the topology, no mask or weight may change; the next finite step
    runs the due update."""
    s = build_setup(cfg, "wrn", sparse=True, update_frequency=1)  # every counted step is an update step
    on_cuda = cfg.device.type == "cuda"
    scaler = torch.amp.GradScaler(cfg.device.type)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if on_cuda else contextlib.nullcontext
    model, masking = s.model, s.masking
    bias = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].bias  # never masked
    weights_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks_before = {n: m.clone() for n, m in masking.masks.items()}
    scale_before = scaler.get_scale()

    def step(x, y, overflow: bool) -> bool:
        s.optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if overflow:
            bias.grad[0] = float("inf")
        updated = masking.step(scaler=scaler)
        scaler.update()
        return updated

    updated = step(*s.batches[0], overflow=True)
    changed = {n: int((p.detach() != weights_before[n]).sum()) for n, p in model.named_parameters()}
    out = {"precision": "fp16 autocast" if on_cuda else "fp32 compute, CPU GradScaler (dry run)",
           "scale_before": scale_before, "scale_after": scaler.get_scale(), "steps_counted": masking.steps,
           "topology_update_ran": bool(updated) or masking.num_updates > 0,
           "mask_entries_changed": sum(int((masks_before[n] != m).sum()) for n, m in masking.masks.items()),
           "params_changed": sum(changed.values())}
    next_updated = step(*s.batches[1], overflow=False)
    out.update(next_step_counted=masking.steps == 1, next_step_ran_update=bool(next_updated))
    expected = {"steps_counted": 0, "topology_update_ran": False, "mask_entries_changed": 0, "params_changed": 0,
                "next_step_counted": True, "next_step_ran_update": True}
    wrong = {k: out[k] for k, v in expected.items() if out[k] != v}
    if scaler.get_scale() >= scale_before or wrong:
        raise CheckFailed(f"skipped fp16 step: expected {expected} and a lower scale, got {wrong or out}")
    return {**out, "expected": "skipped step: not counted, no update, masks and weights unchanged"}


def _masks_after_updates(cfg: Config, steps: int) -> tuple[dict, Masking]:
    s = build_setup(cfg, "wrn", sparse=True, update_frequency=2)
    run_steps(s, steps)
    _sync(cfg.device)
    return {n: m.detach().cpu().clone() for n, m in s.masking.masks.items()}, s.masking


def section_masks_identical(cfg: Config) -> dict:
    """Two runs from one seed under deterministic settings must give identical masks (cudnn autotuning and
    atomics-based kernels may otherwise change gradients in their last bits, and so ties in growth)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts in this process
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    steps = 6  # three topology updates
    first, masking = _masks_after_updates(cfg, steps)
    second, _ = _masks_after_updates(cfg, steps)
    differing = {n: int((first[n] != second[n]).sum()) for n in first}
    budgets_kept = all(int(first[n].sum()) == masking.budgets[n] for n in first)
    out = {"model": "wrn-%d-%d sparse" % cfg.wrn, "topology_updates": masking.num_updates,
           "settings": "torch.use_deterministic_algorithms(True), cudnn.deterministic, no cudnn autotuning",
           "identical": not any(differing.values()), "differing_entries": sum(differing.values()),
           "layers_differing": sorted(n for n, d in differing.items() if d)[:8],
           "per_layer_counts_kept": budgets_kept, "checksum": mask_checksum(first).tolist()}
    if not (out["identical"] and budgets_kept):
        raise CheckFailed(f"masks differ between two deterministic runs: {out}")
    return out


def _count_syncs(cfg: Config, s: Setup, steps: int) -> dict:
    run_steps(s, 1)  # first-call work (allocations, lazy inits) is not per-step
    _sync(cfg.device)
    with cuda_sync_warnings() as cuda_syncs, HostSyncCounter() as syncs:
        run_steps(s, steps)
    per_step = {name: round(n / steps, 2) for name, n in sorted(syncs.counts.items())}
    out = {"python_calls_per_step": round(syncs.total / steps, 2), "by_call": per_step}
    if cfg.device.type == "cuda":
        out["on_gpu_tensors_per_step"] = round(syncs.on_device / steps, 2)
        out["cuda_sync_debug_per_step"] = round(len(cuda_syncs) / steps, 2)
        out["cuda_sync_kinds"] = sorted(collections.Counter(cuda_syncs))[:8]
    return out


def section_host_syncs(cfg: Config) -> dict:
    n = cfg.sync_steps
    dense = build_setup(cfg, "wrn", sparse=False)
    sparse = build_setup(cfg, "wrn", sparse=True, update_frequency=10 ** 9)  # no topology update in the window
    every = build_setup(cfg, "wrn", sparse=True, update_frequency=1)  # every step a topology update
    out = {"model": "wrn-%d-%d" % cfg.wrn, "steps": n, "dense": _count_syncs(cfg, dense, n),
           "sparse_plain_step": _count_syncs(cfg, sparse, n), "sparse_update_step": _count_syncs(cfg, every, n),
           "note": "per step over a train_one_epoch of N steps (its end-of-epoch reads divided by N); "
                   f"counted: {', '.join(HostSyncCounter.TENSOR_METHODS + HostSyncCounter.TORCH_FUNCTIONS)}, "
                   "bool indexing, .to(cpu)"}
    if out["sparse_plain_step"]["python_calls_per_step"] > out["dense"]["python_calls_per_step"]:
        raise CheckFailed(f"a sparse step waits for the device more often than a dense one: {out}")
    return out


@contextlib.contextmanager
def single_process_group(backend: str, device: torch.device):
    """torch.distributed at world size 1 from env vars (as torchrun would set them), torn down after."""
    import torch.distributed as dist

    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    kwargs = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend, init_method="env://", **kwargs)
    try:
        yield dist
    finally:
        dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def section_ddp(cfg: Config) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if cfg.device.type == "cuda" else "gloo"
    with single_process_group(backend, cfg.device) as dist:
        probe = torch.full((4,), 3.0, device=cfg.device)
        dist.all_reduce(probe)
        s = build_setup(cfg, "wrn", sparse=True, update_frequency=2)
        s.model = DistributedDataParallel(s.model, device_ids=[cfg.device.index or 0] if backend == "nccl" else None)
        s.masking.broadcast_masks(src=0)
        run_steps(s, cfg.warmup)
        seconds = _timed_steps(cfg, s, cfg.sync_steps)
        assert_masks_in_sync(s.masking.masks)
        return {"backend": backend, "world_size": dist.get_world_size(), "all_reduce_ok": bool((probe == 3.0).all()),
                "model": "wrn-%d-%d sparse (update every 2 steps)" % cfg.wrn, "topology_updates": s.masking.num_updates,
                "masks_in_sync": masks_in_sync(s.masking.masks),
                "images_per_s": round(cfg.sync_steps * s.batches[0][0].shape[0] / seconds, 1),
                "note": "world size 1: checks that NCCL starts and DDP wraps the engine's loop; the cross-rank "
                        "mask check is section ddp_engine" + ("" if backend == "nccl" else "; CPU: gloo")}


def section_ddp_engine(cfg: Config) -> dict:
    return engine.ddp_engine(cfg.dry_run, timeout=_limit(cfg, "ddp_engine") - 10)


# ---------------------------------------------------------------------------------- throughput sections
def section_throughput_wrn(cfg: Config) -> dict:
    dense = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=False)
    sparse = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=True)
    return {"model": "wrn-%d-%d" % cfg.wrn, "precision": "fp32 (TF32 on, as the engine)", "dense": dense,
            "sparse": sparse, "sparse_over_dense": ratio(sparse, dense)}


def section_throughput_resnet50(cfg: Config) -> dict:
    out = {"model": cfg.resnet, "image_size": cfg.resnet_size}
    for precision in ["fp32"] + (["bf16"] if _bf16_supported(cfg) else []):
        dense = measure(cfg, "resnet", steps=cfg.resnet_steps, sparse=False, bf16=precision == "bf16")
        sparse = measure(cfg, "resnet", steps=cfg.resnet_steps, sparse=True, bf16=precision == "bf16")
        out[precision] = {"dense": dense, "sparse": sparse, "sparse_over_dense": ratio(sparse, dense)}
    if "bf16" not in out:
        out["bf16_skipped"] = _no_bf16_reason(cfg)
    return out


def section_amp(cfg: Config) -> dict:
    out = {"model": "wrn-%d-%d" % cfg.wrn, "fp32": "TF32 on, as the engine"}
    if not _bf16_supported(cfg):
        return {**out, "skipped": _no_bf16_reason(cfg)}
    for sparse in (False, True):
        fp32 = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=sparse)
        bf16 = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=sparse, bf16=True)
        out["sparse" if sparse else "dense"] = {"fp32": fp32, "bf16": bf16, "bf16_over_fp32": ratio(bf16, fp32)}
    return out


def section_channels_last(cfg: Config) -> dict:
    bf16 = _bf16_supported(cfg)
    off = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=True, bf16=bf16)
    on = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=True, bf16=bf16, channels_last=True)
    return {"model": "wrn-%d-%d sparse" % cfg.wrn, "precision": "bf16" if bf16 else "fp32", "off": off, "on": on,
            "on_over_off": ratio(on, off)}


def section_imagenet_pipeline(cfg: Config) -> dict:
    return engine.pipeline(cfg.device, cfg.pipeline_images_per_class, cfg.pipeline_image_shape, cfg.pipeline_size,
                           cfg.pipeline_batch, cfg.workers)


def section_end_to_end(cfg: Config) -> dict:
    return engine.end_to_end(cfg.dry_run, timeout=_limit(cfg, "end_to_end") - 10)


def section_compile(cfg: Config) -> dict:
    bf16 = _bf16_supported(cfg)
    off = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=True, bf16=bf16)
    on = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=True, bf16=bf16, compiled=True)
    out = {"model": "wrn-%d-%d sparse" % cfg.wrn, "precision": "bf16" if bf16 else "fp32",
           "backend": cfg.compile_backend, "off": off, "on": on, "on_over_off": ratio(on, off),
           "compile_and_warmup_s": on["warmup_s"]}
    if cfg.dry_run:
        out["note"] = "dry run: backend 'eager' (dynamo tracing only); inductor needs a GPU run to mean anything"
    return out


# ---------------------------------------------------------------------------------- report
HEADLINE_KEYS = ("images_per_s", "_over_", "per_step", "identical", "in_sync", "ran", "changed", "counted",
                 "checks", "compile_and_warmup_s", "model", "backend", "precision", "error", "note", "skipped")


def markdown(report: dict) -> str:
    """The headline figures as one markdown block for benchmarks/RESULTS.md (every figure is in the JSON)."""
    lines = [f"### GPU check ({'dry run, CPU' if report['dry_run'] else report['device_name']})", "",
             f"{report['machine']}; CUDA {report['cuda']}; all sections {report['total_s']} s", "",
             "| section | figure | value |", "|---|---|---|"]
    for name, result in report["sections"].items():
        lines.append(f"| **{name}** | status, seconds (estimate) | {result.get('status')}, {result.get('seconds', '?')} "
                     f"({BUDGET[name][0]}) |")
        for key, value in _flatten(result):
            if any(h in key.rsplit(".", 1)[-1] for h in HEADLINE_KEYS) and key != "status":
                lines.append(f"| | {key} | {value} |")
    return "\n".join(lines) + "\n"


def _flatten(d: dict, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))


# ---------------------------------------------------------------------------------- running sections
def _section_child(name: str, cfg: Config, conn) -> None:
    """In the forked process: run one section, send back its result."""
    try:
        result = {"status": "ok", **globals()[f"section_{name}"](cfg)}
    except CheckFailed as err:
        result = {"status": "fail", "error": str(err)[:1500]}
    except Exception as err:  # one broken section must not hide the others' figures
        result = {"status": "error", "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}",
                  "traceback": traceback.format_exc()[-2000:]}
    conn.send(json.loads(json.dumps(result, default=str)))
    conn.close()


def run_section(name: str, cfg: Config, limit: float) -> dict:
    """One section in a forked process under `limit` seconds: its result, or status "timeout"/"error"."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_section_child, args=(name, cfg, send), name=f"gpu_check_{name}")
    proc.start()
    send.close()
    try:
        if receive.poll(limit):
            return receive.recv()
        return {"status": "timeout", "error": f"no result within its {limit:.0f} s limit; stopped"}
    except EOFError:  # the child died without a word (a crash, the OOM killer)
        proc.join(5)
        return {"status": "error", "error": f"the section's process exited with code {proc.exitcode}"}
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


def print_budget(names: list[str], limits: dict[str, float]) -> None:
    estimate = sum(BUDGET[n][0] for n in names)
    print(f"gpu_check time budget (estimates for one H100; limits stop a section, not the check): "
          f"{estimate} s for {len(names)} sections + ~{TESTS_ESTIMATE_S} s of CUDA tests in gpu_check.sh = "
          f"{(estimate + TESTS_ESTIMATE_S) / 60:.1f} min", flush=True)
    for n in names:
        print(f"  {n:20s} estimate {BUDGET[n][0]:4d} s, limit {limits[n]:5.0f} s", flush=True)


def run_sections(cfg: Config, names: list[str], out: Path, limits: dict[str, float] | None = None) -> dict:
    limits = {n: _limit(cfg, n) for n in names} if limits is None else limits
    report = {"dry_run": cfg.dry_run, "device": str(cfg.device), "machine": machine_info(), "torch": torch.__version__,
              "cuda": torch.version.cuda, "device_name": (torch.cuda.get_device_name(cfg.device)
                                                          if cfg.device.type == "cuda" else "cpu"),
              "config": {k: str(v) for k, v in dataclasses.asdict(cfg).items()}, "sections": {}, "total_s": 0,
              "budget": {n: {"estimate_s": BUDGET[n][0], "limit_s": limits[n]} for n in names}}
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        result = run_section(name, cfg, limits[name])
        result["seconds"] = round(time.perf_counter() - t0, 2)
        report["sections"][name] = result
        report["total_s"] = round(time.perf_counter() - start, 1)
        write_report(report, out)
        shown = {k: v for k, v in result.items() if k != "traceback"}
        print(f"[{name}] {json.dumps(shown, default=str)}", flush=True)
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: every section")
    parser.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list out of {','.join(SECTIONS)}")
    parser.add_argument("--workers", type=int, default=None, help="data workers of imagenet_pipeline")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise UsageError(f"--sections: unknown {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(SECTIONS)}")
    if not args.dry_run and not torch.cuda.is_available():
        raise UsageError("no CUDA device here; run on a GPU machine, or add --dry-run to check the script on the CPU")
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    cfg = Config.for_run(args.dry_run, device, args.workers)
    limits = {n: _limit(cfg, n) for n in names}
    print_budget(names, limits)
    report = run_sections(cfg, names, Path(args.out), limits)
    failed = [f"{n} ({r['status']})" for n, r in report["sections"].items() if r["status"] != "ok"]
    print(f"gpu_check: {len(names) - len(failed)}/{len(names)} sections ok in {report['total_s']} s; "
          f"figures in {Path(args.out) / 'gpu_check.md'}" + (f"; NOT OK: {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(1)
    return report


if __name__ == "__main__":
    run_cli(main, on_stop="the sections finished so far are in gpu_check.json and gpu_check.md")
