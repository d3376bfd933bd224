"""Checks of numbers that cannot work, made before a run builds or writes anything.

The model is built on PyTorch's ``meta`` device (shapes only, no memory), so these checks cost
milliseconds even for a model or an image size that would not fit the machine:

- a learning rate beyond what the parameters' dtype can hold (the first SGD step overflows);
- a density whose allocation leaves a sparse layer with no active weight (the engine would quietly
  keep one per layer, training a network of a handful of weights);
- a model, image size and batch size whose training memory exceeds the machine's memory.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .core.density import allocate_densities
from .core.masking import sparse_layer_names
from .errors import UsageError

PARAM_DTYPE = torch.float32  # the parameters' dtype (--amp computes in half precision, keeps fp32 weights)


def check_lr(lr: float) -> None:
    limit = torch.finfo(PARAM_DTYPE).max
    if lr > limit:
        raise UsageError(f"--lr {lr:g} overflows the parameters' float32 (largest {limit:.3g}): the first step would "
                         f"make every weight inf; lower --lr (the paper uses 0.1)")


def meta_model(build) -> nn.Module:
    """`build()`'s model on the meta device: parameters and activations have shapes but no storage."""
    with torch.device("meta"):
        return build()


def check_layer_densities(model: nn.Module, density: float, sparse_init: str, erk_power_scale: float) -> None:
    """Every sparse layer keeps at least one active weight at this density (ERK, ER, uniform)."""
    if sparse_init not in ("ERK", "ER", "uniform"):
        return  # pruning: a global count, checked by the pruning itself
    names = sparse_layer_names(model)
    shapes = {n: tuple(model.get_parameter(n).shape) for n in names}
    numels = {n: model.get_parameter(n).numel() for n in names}
    alloc = allocate_densities(sparse_init, shapes, density, erk_power_scale)
    empty = [n for n in names if round(alloc[n] * numels[n]) < 1]
    if empty:
        # a layer's density scales with --density (ERK/ER: a fixed multiple of it), so half a weight needs this much
        needed = max(0.5 * density / (alloc[n] * numels[n]) if alloc[n] > 0 else 1.0 for n in empty)
        name = empty[0]
        raise UsageError(f"--density {density:g} leaves layer {name} ({numels[name]} weights, density "
                         f"{alloc[name]:.3g}){f' and {len(empty) - 1} more' if len(empty) > 1 else ''} with no active "
                         f"weight; raise --density to about {min(needed, 1.0):.2g} or more")


def training_bytes(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, act_bytes: int = 4,
                   copies: int = 3) -> int:
    """A low estimate of training memory: float32 weights, gradients and momentum (`copies` of the parameters;
    1 to evaluate), plus every layer's output for the batch (kept for the backward pass; `act_bytes` each, 2
    under AMP). In-place layers add nothing."""
    outputs = []

    def count(module, args, out):
        if torch.is_tensor(out) and not getattr(module, "inplace", False):
            outputs.append(out.numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    model.eval()  # batch statistics of a one-image batch are undefined; the shapes are the same
    try:
        with torch.no_grad():
            model(torch.empty(1, *input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return 4 * copies * params + act_bytes * batch_size * sum(outputs)


def machine_memory(device: str) -> tuple[int, str]:
    """(bytes, what) of the memory a run on `device` ("cpu" or "cuda") has."""
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory, "the GPU's memory"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    except (ValueError, OSError, AttributeError):
        return 0, ""


def check_memory(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, device: str, what: str,
                 amp: bool = False) -> None:
    have, where = machine_memory(device)
    need = training_bytes(model, input_shape, batch_size, 2 if amp and device == "cuda" else 4)
    if have and need > have:
        raise UsageError(f"{what} needs at least {need / 2 ** 30:.1f} GiB to train (weights, gradients and "
                         f"activations, estimated), more than {where} ({have / 2 ** 30:.1f} GiB); lower the batch "
                         f"size or the image size")


def run_device(flag: str) -> str:
    """The device type a run with --device `flag` uses."""
    return "cuda" if flag in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def check_run_numbers(args, build_model, input_shape: tuple[int, ...], what: str, sparse: bool) -> None:
    """The layer densities (sparse runs drawing masks at --density) and the memory estimate of a run's flags."""
    model = meta_model(build_model)
    if sparse:
        check_layer_densities(model, args.density, args.sparse_init, args.erk_power_scale)
    check_memory(model, input_shape, args.batch_size, run_device(args.device), what, args.amp)


def check_ticket_fits(build_model, input_shape: tuple[int, ...], device: str, name: str) -> None:
    """A ticket's model and one input image fit the machine (its sizes are read from the file, not chosen)."""
    model = meta_model(build_model)
    have, where = machine_memory(device)
    need = training_bytes(model, input_shape, 1, copies=1)
    if have and need > have:
        raise UsageError(f"its {name} at image size {input_shape[-1]} needs at least {need / 2 ** 30:.1f} GiB "
                         f"(estimated), more than {where} ({have / 2 ** 30:.1f} GiB); the ticket's metadata is "
                         f"damaged - use a ticket written by these scripts")
