"""HostSyncCounter: counts the Python calls that make the host wait for the device (used by gpu_check.py and
tests/test_no_host_sync.py).

Patched while active, on torch.Tensor: ``item cpu tolist numpy __bool__ __float__ __int__ __index__ nonzero
__repr__ __format__`` (print, f-strings and logging of a tensor go through the last two), ``to`` when it
copies to the CPU, ``__getitem__``/``__setitem__`` with a boolean-mask index; on torch: ``nonzero
equal masked_select`` and ``cuda.synchronize``. ``counts`` holds every call by name; ``device_counts`` only
those on a non-CPU tensor (on a GPU, the calls that really synchronise). Nested calls (one of these calling
another) count once. Syncs inside C++ are not seen: on CUDA, pair it with ``torch.cuda.set_sync_debug_mode``
(:func:`cuda_sync_warnings`).

    with HostSyncCounter() as syncs:
        loss.item()
    syncs.total, syncs.counts["item"]
"""
from __future__ import annotations

import collections
import contextlib
import threading
import warnings
from typing import Callable

import torch

_MISSING = object()


def _has_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in items)


def _first_tensor(args) -> torch.Tensor | None:
    return next((a for a in args if torch.is_tensor(a)), None)


class HostSyncCounter:
    TENSOR_METHODS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__",
                      "nonzero", "__repr__", "__format__")
    TORCH_FUNCTIONS = ("nonzero", "equal", "masked_select")

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

    def _count(self, name: str, tensor: torch.Tensor | None) -> None:
        self.counts[name] += 1
        if tensor is None or tensor.device.type != "cpu":
            self.device_counts[name] += 1

    def _wrap(self, name: str, original: Callable, counts: Callable[..., bool] | None = None) -> Callable:
        counter = self

        def counted(*args, **kwargs):
            depth = getattr(counter._local, "depth", 0)
            counter._local.depth = depth + 1
            try:
                result = original(*args, **kwargs)
            finally:
                counter._local.depth = depth
            if depth == 0 and (counts is None or counts(args, kwargs, result)):
                counter._count(name, _first_tensor(args))
            return result

        return counted

    def __enter__(self) -> "HostSyncCounter":
        def to_cpu(args, kwargs, result):  # a copy to the host (on the CPU already: returns itself)
            named = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))]
            return any(torch.device(a).type == "cpu" for a in named) and result is not args[0]

        def bool_index(args, kwargs, result):
            return _has_bool_index(args[1])

        targets = [(torch.Tensor, name, None) for name in self.TENSOR_METHODS]
        targets += [(torch.Tensor, "to", to_cpu), (torch.Tensor, "__getitem__", bool_index),
                    (torch.Tensor, "__setitem__", bool_index)]
        targets += [(torch, name, None) for name in self.TORCH_FUNCTIONS]
        targets.append((torch.cuda, "synchronize", None))
        for owner, name, condition in targets:
            self._saved.append((owner, name, vars(owner).get(name, _MISSING)))
            label = name if owner is torch.Tensor else f"torch.{name}"
            setattr(owner, name, self._wrap(label, getattr(owner, name), condition))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._saved):
            if original is _MISSING:  # inherited (e.g. from torch._C.TensorBase): drop the patch
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()


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
