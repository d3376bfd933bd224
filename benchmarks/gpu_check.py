"""The GPU check (issue 13): one run that measures what only a GPU can tell, with the project's own pieces.

Sections (each one is timed and reported on its own; one failing does not stop the others):

- throughput_wrn       dense vs sparse training, WRN-28-10 at CIFAR shapes (images/s), fp32
- throughput_resnet50  dense vs sparse, torchvision ResNet-50 at 224, fp32 and bf16 autocast
- amp                  fp32 vs bf16 autocast (WRN, dense and sparse)
- channels_last        channels-last model and batches on/off (WRN sparse)
- compile              torch.compile on/off (WRN sparse), compile time apart
- host_syncs           calls that make the host wait for the GPU, per training step (dense, sparse,
                       sparse update step), counted by HostSyncCounter (and CUDA's sync debug mode)
- ddp                  DistributedDataParallel over NCCL at world size 1: trains, masks checked in sync
- masks_identical      two runs from one seed on the device: identical masks after topology updates
- fp16_overflow        a GradScaler fp16 step with one gradient set to inf: was the step skipped, and did
                       Masking's topology update run anyway
- imagenet_pipeline    images/s of the ImageNet data path (image_folder -> image_loader -> DeviceBatches)
                       over a small ImageFolder of JPEGs written to a temporary folder

Everything comes from inside the machine (generated tensors and images). ``--dry-run`` runs every
section on the CPU at tiny shapes in well under a minute, so the test suite keeps this script working;
bf16 is skipped there (the engine's --amp is CUDA-only) and torch.compile uses the "eager" backend.

    python benchmarks/gpu_check.py --out gpu_check_out          # on a GPU, a few minutes
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc      # anywhere, seconds

Writes ``gpu_check.json`` (all figures) and ``gpu_check.md`` (tables for benchmarks/RESULTS.md) into --out,
rewritten after every section so a run cut short still leaves what it measured.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from models import get_model, imagenet_resnet  # noqa: E402
from models.wide_resnet import WideResNet  # noqa: E402
from sparselearning.core.distributed import assert_masks_in_sync, mask_checksum, masks_in_sync  # noqa: E402
from sparselearning.core.masking import Masking  # noqa: E402
from sparselearning.errors import UsageError, run_cli  # noqa: E402
from sparselearning.provenance import machine_info  # noqa: E402
from sparselearning.loop import autocast_context, train_one_epoch  # noqa: E402

SECTIONS = ("throughput_wrn", "throughput_resnet50", "amp", "channels_last", "compile", "host_syncs", "ddp",
            "masks_identical", "fp16_overflow", "imagenet_pipeline")


# ---------------------------------------------------------------------------------- host-sync counter
class HostSyncCounter:
    """Counts, while active, the Python calls that make the host wait for the device.

    Patches torch.Tensor's item / cpu / tolist / numpy / __bool__ / __float__ / __int__ and
    torch.cuda.synchronize. ``counts`` holds every call by name; ``device_counts`` only those on
    a non-CPU tensor (on a GPU, the calls that really synchronise). Nested calls (one of these
    calling another) count once. Syncs inside C++ (e.g. nonzero) are not seen: on CUDA, pair it
    with ``torch.cuda.set_sync_debug_mode`` (see :func:`cuda_sync_warnings`).

        with HostSyncCounter() as syncs:
            loss.item()
        syncs.total, syncs.counts["item"]
    """

    TENSOR_METHODS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.device_counts: collections.Counter = collections.Counter()
        self._saved: list[tuple[object, str, object]] = []
        self._local = threading.local()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def on_device(self) -> int:
        return sum(self.device_counts.values())

    def _wrap(self, name: str, original: Callable, tensor_method: bool) -> Callable:
        counter = self

        def counted(*args, **kwargs):
            depth = getattr(counter._local, "depth", 0)
            if depth == 0:
                counter.counts[name] += 1
                if not tensor_method or (args and args[0].device.type != "cpu"):
                    counter.device_counts[name] += 1
            counter._local.depth = depth + 1
            try:
                return original(*args, **kwargs)
            finally:
                counter._local.depth = depth

        return counted

    def __enter__(self) -> "HostSyncCounter":
        targets = [(torch.Tensor, name, True) for name in self.TENSOR_METHODS]
        targets.append((torch.cuda, "synchronize", False))
        for owner, name, tensor_method in targets:
            self._saved.append((owner, name, vars(owner).get(name, _MISSING)))
            setattr(owner, name, self._wrap(name, getattr(owner, name), tensor_method))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._saved):
            if original is _MISSING:  # inherited (e.g. from torch._C.TensorBase): drop the patch
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()


_MISSING = object()


@contextlib.contextmanager
def cuda_sync_warnings():
    """On CUDA: a list that fills with one entry per synchronising CUDA call (torch's sync debug mode)."""
    found: list[str] = []
    if not torch.cuda.is_available():
        yield found
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found.extend(str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message))


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
    update_frequency: int
    sync_steps: int
    pipeline_images_per_class: int
    pipeline_image_shape: tuple[int, int]  # height, width of the written JPEGs
    pipeline_size: int
    pipeline_batch: int
    workers: int
    compile_backend: str

    @classmethod
    def for_run(cls, dry_run: bool, device: torch.device, workers: int | None) -> "Config":
        if dry_run:
            return cls(device, True, (10, 1), 4, 3, "resnet18", 32, 2, 2, 1, 0.2, 3, 3, 6, (40, 48), 32, 4,
                       0 if workers is None else workers, "eager")  # workers: the fork server alone takes ~10 s
        return cls(device, False, (28, 10), 128, 100, "resnet50", 224, 64, 40, 10, 0.2, 100, 10, 320, (375, 500),
                   224, 32, min(8, os.cpu_count() or 1) if workers is None else workers, "inductor")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bf16_supported(cfg: Config) -> bool:
    return cfg.device.type == "cuda" and torch.cuda.is_bf16_supported()


def _no_bf16_reason(cfg: Config) -> str:
    return ("bf16 autocast is CUDA-only in the engine (--amp); not measured on the CPU" if cfg.device.type != "cuda"
            else "this GPU has no bf16")


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
    """A model of `kind` ("wrn" or "resnet") on the device with its optimizer, Masking and synthetic batches."""
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


def measure(cfg: Config, kind: str, *, steps: int, **setup_kwargs) -> dict:
    """images/s of `steps` training steps after cfg.warmup untimed ones (warm-up time reported apart)."""
    s = build_setup(cfg, kind, **setup_kwargs)
    _sync(cfg.device)
    t0 = time.perf_counter()
    run_steps(s, cfg.warmup)
    _sync(cfg.device)
    t1 = time.perf_counter()
    updates_before = s.masking.num_updates if s.masking else 0
    run_steps(s, steps)
    _sync(cfg.device)
    t2 = time.perf_counter()
    batch = s.batches[0][0].shape[0]
    out = {"images_per_s": round(steps * batch / (t2 - t1), 1), "ms_per_step": round(1000 * (t2 - t1) / steps, 2),
           "warmup_s": round(t1 - t0, 2), "steps": steps, "batch": batch}
    if s.masking:
        out["topology_updates_timed"] = s.masking.num_updates - updates_before
        out["density"] = round(s.masking.density(), 4)
    if cfg.device.type == "cuda":
        out["max_memory_gib"] = round(torch.cuda.max_memory_allocated(cfg.device) / 2 ** 30, 2)
        torch.cuda.reset_peak_memory_stats(cfg.device)
    return out


def ratio(a: dict, b: dict) -> float:
    return round(a["images_per_s"] / b["images_per_s"], 3)


# ---------------------------------------------------------------------------------- sections
def section_throughput_wrn(cfg: Config) -> dict:
    dense = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=False)
    sparse = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=True)
    return {"model": "wrn-%d-%d" % cfg.wrn, "dense": dense, "sparse": sparse, "sparse_over_dense": ratio(sparse, dense)}


def section_throughput_resnet50(cfg: Config) -> dict:
    out = {"model": cfg.resnet, "image_size": cfg.resnet_size}
    precisions = ["fp32"] + (["bf16"] if _bf16_supported(cfg) else [])
    for precision in precisions:
        kw = {"steps": cfg.resnet_steps, "bf16": precision == "bf16", "channels_last": precision == "bf16"}
        dense = measure(cfg, "resnet", sparse=False, **kw)
        sparse = measure(cfg, "resnet", sparse=True, update_frequency=cfg.resnet_steps, **kw)
        out[precision] = {"dense": dense, "sparse": sparse, "sparse_over_dense": ratio(sparse, dense),
                          "channels_last": kw["channels_last"]}
    if "bf16" not in out:
        out["bf16_skipped"] = _no_bf16_reason(cfg)
    return out


def section_amp(cfg: Config) -> dict:
    out = {"model": "wrn-%d-%d" % cfg.wrn}
    for sparse in (False, True):
        name = "sparse" if sparse else "dense"
        fp32 = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=sparse)
        out[name] = {"fp32": fp32}
        if _bf16_supported(cfg):
            bf16 = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=sparse, bf16=True)
            out[name].update(bf16=bf16, bf16_over_fp32=ratio(bf16, fp32))
    if not _bf16_supported(cfg):
        out["skipped"] = _no_bf16_reason(cfg)
    return out


def section_channels_last(cfg: Config) -> dict:
    bf16 = _bf16_supported(cfg)
    off = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=True, bf16=bf16)
    on = measure(cfg, "wrn", steps=cfg.wrn_steps, sparse=True, bf16=bf16, channels_last=True)
    return {"model": "wrn-%d-%d sparse" % cfg.wrn, "precision": "bf16" if bf16 else "fp32", "off": off, "on": on,
            "on_over_off": ratio(on, off)}


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
    return {"model": "wrn-%d-%d" % cfg.wrn, "steps": n, "dense": _count_syncs(cfg, dense, n),
            "sparse_plain_step": _count_syncs(cfg, sparse, n), "sparse_update_step": _count_syncs(cfg, every, n),
            "note": "python calls: Tensor.item/cpu/tolist/numpy/__bool__/__float__/__int__ and cuda.synchronize"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def single_process_group(backend: str, device: torch.device):
    """torch.distributed at world size 1 from env vars (as torchrun would set them), torn down after."""
    import torch.distributed as dist

    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
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
        _sync(cfg.device)
        start = time.perf_counter()
        run_steps(s, cfg.sync_steps)
        _sync(cfg.device)
        seconds = time.perf_counter() - start
        assert_masks_in_sync(s.masking.masks)
        return {"backend": backend, "world_size": dist.get_world_size(), "all_reduce_ok": bool((probe == 3.0).all()),
                "model": "wrn-%d-%d sparse (update every 2 steps)" % cfg.wrn, "topology_updates": s.masking.num_updates,
                "masks_in_sync": masks_in_sync(s.masking.masks),
                "images_per_s": round(cfg.sync_steps * s.batches[0][0].shape[0] / seconds, 1),
                **({"note": "CPU dry run: gloo instead of nccl"} if backend != "nccl" else {})}


def _masks_after_updates(cfg: Config, steps: int) -> tuple[dict, Masking]:
    s = build_setup(cfg, "wrn", sparse=True, update_frequency=2)
    run_steps(s, steps)
    _sync(cfg.device)
    return {n: m.detach().cpu().clone() for n, m in s.masking.masks.items()}, s.masking


def section_masks_identical(cfg: Config) -> dict:
    steps = 6  # three topology updates
    first, masking = _masks_after_updates(cfg, steps)
    second, _ = _masks_after_updates(cfg, steps)
    differing = {n: int((first[n] != second[n]).sum()) for n in first}
    budgets_kept = all(int(first[n].sum()) == masking.budgets[n] for n in first)
    return {"model": "wrn-%d-%d sparse" % cfg.wrn, "topology_updates": masking.num_updates,
            "identical": not any(differing.values()), "differing_entries": sum(differing.values()),
            "layers_differing": sorted(n for n, d in differing.items() if d)[:8],
            "per_layer_counts_kept": budgets_kept, "checksum": mask_checksum(first).tolist(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic}


def section_fp16_overflow(cfg: Config) -> dict:
    """One update step whose fp16 gradient overflows: the scaler must skip it; does Masking still update?"""
    s = build_setup(cfg, "wrn", sparse=True, update_frequency=1)
    on_cuda = cfg.device.type == "cuda"
    scaler = torch.amp.GradScaler(cfg.device.type)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if on_cuda else contextlib.nullcontext
    model, masking = s.model, s.masking
    bias = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].bias  # never masked
    weights_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks_before = {n: m.clone() for n, m in masking.masks.items()}
    scale_before = scaler.get_scale()
    x, y = s.batches[0]
    s.optimizer.zero_grad(set_to_none=True)
    with autocast():
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    bias.grad[0] = float("inf")
    updated = masking.step(lambda: scaler.step(s.optimizer))
    scaler.update()
    changed = {n: int((p.detach() != weights_before[n]).sum()) for n, p in model.named_parameters()}
    sparse_names = set(masking.masks)
    return {"precision": "fp16 autocast" if on_cuda else "fp32 compute, CPU GradScaler (dry run)",
            "scale_before": scale_before, "scale_after": scaler.get_scale(),
            "scaler_skipped_step": scaler.get_scale() < scale_before
            and all(changed[n] == 0 for n in changed if n not in sparse_names),
            "topology_update_ran": bool(updated) or masking.num_updates > 0,
            "mask_entries_changed": sum(int((masks_before[n] != m).sum()) for n, m in masking.masks.items()),
            "sparse_weights_changed": sum(changed[n] for n in sparse_names),
            "dense_params_changed": sum(v for n, v in changed.items() if n not in sparse_names),
            "expected": "step skipped, no topology update, masks and weights unchanged"}


def _write_jpegs(root: Path, cfg: Config) -> int:
    """train/<class>/*.jpg: smooth colour fields plus noise (ImageNet-like JPEG sizes and decode work)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = cfg.pipeline_image_shape
    yy, xx = np.mgrid[0:h, 0:w]
    noise = rng.normal(0, 20, (h, w, 3))
    count = 0
    for c in ("n00000001", "n00000002"):
        (root / "train" / c).mkdir(parents=True)
        (root / "val" / c).mkdir(parents=True)
        for i in range(cfg.pipeline_images_per_class):
            slope_y, slope_x = rng.uniform(0.2, 1, 2)
            base = np.stack([(yy * slope_y + xx * slope_x + k * 60) % 256 for k in range(3)], -1)
            img = np.clip(base + np.roll(noise, i, axis=1), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "train" / c / f"{i}.jpg", quality=90)
            count += 1
        Image.fromarray(img).save(root / "val" / c / "0.jpg", quality=90)
    return count


def _timed_pass(batches, device: torch.device) -> tuple[float, float, int]:
    """(seconds to the first batch, images/s after it, images) of one pass over `batches`."""
    _sync(device)
    start = time.perf_counter()
    first_at, after_first, seen = None, 0, 0
    for x, _ in batches:
        _sync(device)
        seen += int(x.shape[0])
        if first_at is None:
            first_at = time.perf_counter()
        else:
            after_first += int(x.shape[0])
    end = time.perf_counter()
    rate = after_first / (end - first_at) if after_first and end > first_at else float("nan")
    return first_at - start, rate, seen


def section_imagenet_pipeline(cfg: Config) -> dict:
    """Training transform (RandomResizedCrop, flip) in the workers, normalisation on the device, as ImageNet/main.py."""
    from sparselearning.data.imagenet import DeviceBatches, image_folder, image_loader

    with tempfile.TemporaryDirectory(prefix="gpu_check_imagefolder_") as tmp:
        t0 = time.perf_counter()
        n = _write_jpegs(Path(tmp), cfg)
        written = time.perf_counter() - t0
        ds = image_folder(tmp, "train", cfg.pipeline_size)
        loader = image_loader(ds, cfg.pipeline_batch, cfg.workers, cfg.device, shuffle=True, drop_last=False)
        batches = DeviceBatches(loader, cfg.device)
        passes = [_timed_pass(batches, cfg.device) for _ in range(3)]  # the first one starts the fork server
    h, w = cfg.pipeline_image_shape
    steady = sorted(rate for _, rate, _ in passes[1:])
    return {"images": n, "jpeg_shape": f"{w}x{h}", "crop": cfg.pipeline_size, "batch": cfg.pipeline_batch,
            "workers": cfg.workers, "cpu_count": os.cpu_count(), "images_per_s": round(steady[-1], 1),
            "first_batch_s": [round(p[0], 2) for p in passes], "all_images_seen": all(p[2] == n for p in passes),
            "write_s": round(written, 2), "note": "images/s after each pass's first batch (workers restart per pass, "
                                                   "as in training); best of passes 2-3"}


# ---------------------------------------------------------------------------------- report
HEADLINE_KEYS = ("images_per_s", "_over_", "per_step", "identical", "in_sync", "skipped", "ran", "changed",
                 "compile_and_warmup_s", "model", "backend", "precision", "error", "note")


def markdown(report: dict) -> str:
    """The headline figures as one markdown block for benchmarks/RESULTS.md (every figure is in the JSON)."""
    lines = [f"### GPU check ({'dry run, CPU' if report['dry_run'] else report['device_name']})", "",
             f"{report['machine']}; CUDA {report['cuda']}; all sections {report['total_s']} s", "",
             "| section | figure | value |", "|---|---|---|"]
    for name, result in report["sections"].items():
        lines.append(f"| **{name}** | status, seconds | {result.get('status')}, {result.get('seconds', '?')} |")
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


def run_sections(cfg: Config, names: list[str], out: Path) -> dict:
    report = {"dry_run": cfg.dry_run, "device": str(cfg.device), "machine": machine_info(), "torch": torch.__version__,
              "cuda": torch.version.cuda, "device_name": (torch.cuda.get_device_name(cfg.device)
                                                          if cfg.device.type == "cuda" else "cpu"),
              "config": {k: str(v) for k, v in dataclasses.asdict(cfg).items()}, "sections": {}, "total_s": 0}
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            result = {"status": "ok", **globals()[f"section_{name}"](cfg)}
        except Exception as err:  # one broken section must not hide the others' figures
            result = {"status": "error", "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}",
                      "traceback": traceback.format_exc()[-2000:]}
        result["seconds"] = round(time.perf_counter() - t0, 2)
        report["sections"][name] = result
        report["total_s"] = round(time.perf_counter() - start, 1)
        write_report(report, out)
        shown = {k: v for k, v in result.items() if k != "traceback"}
        print(f"[{name}] {json.dumps(shown, default=str)}", flush=True)
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: every section, in seconds")
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
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as ImageNet/main.py; fixed shapes throughout
    cfg = Config.for_run(args.dry_run, device, args.workers)
    report = run_sections(cfg, names, Path(args.out))
    failed = [n for n, r in report["sections"].items() if r["status"] != "ok"]
    print(f"gpu_check: {len(names) - len(failed)}/{len(names)} sections ok in {report['total_s']} s; "
          f"figures in {Path(args.out) / 'gpu_check.md'}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(1)
    return report


if __name__ == "__main__":
    run_cli(main, on_stop="the sections finished so far are in gpu_check.json and gpu_check.md")
