"""FLOPs accounting in RigL's convention (Evci et al. 2020).

- Dense per-layer forward FLOPs are measured once with torch.utils.flop_counter (FLOPs =
  2 x multiply-adds). A sparse layer costs its density times its dense FLOPs; everything the
  counter sees outside the sparse layers is counted dense.
- A training step costs 3 x forward (forward + backward of about twice the forward).
- A step that needs the dense gradient (gradient growth at a topology update) costs
  2 x f_sparse + f_dense instead.
- EDST's re-exploration grows on the dense gradient of one extra batch, charged f_dense per
  sample (the extra that RigL's convention assigns to a dense gradient).
- Under data parallelism every rank trains on its own batch: a step counts world_size batches.
- Training cost is reported relative to one dense model trained for 250 epochs (the paper's
  yardstick).

``python -m sparselearning.flops_cli --model wrn-28-10 --data cifar10 --density 0.2`` prints a table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .masking import sparse_layer_names

DENSE_REFERENCE_EPOCHS = 250


@dataclass(frozen=True)
class FlopsProfile:
    """Dense forward FLOPs per sample: per sparse layer, and the rest of the network."""

    layers: dict[str, int]
    other: int

    @property
    def dense(self) -> int:
        return sum(self.layers.values()) + self.other

    def sparse(self, densities: Mapping[str, float]) -> float:
        """Forward FLOPs per sample with the given per-layer densities (missing layers: dense)."""
        return self.other + sum(f * densities.get(n, 1.0) for n, f in self.layers.items())


def profile_model(model: nn.Module, input_shape: tuple[int, ...], sparse_names: list[str] | None = None) -> FlopsProfile:
    """Measure dense forward FLOPs of one sample of `input_shape` (C, H, W), split per weight name.

    sparse_names: weight names (e.g. 'block1.layer.0.conv1.weight') whose module FLOPs are
    attributed to that layer (less the FLOPs of other listed modules inside it); default
    masking.sparse_layer_names (Conv/Linear/attention weights).
    """
    if sparse_names is None:
        sparse_names = sparse_layer_names(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    keys = {n: (f"{root}.{n.rsplit('.', 1)[0]}" if "." in n else root) for n in sparse_names}
    own = _own_flops({k: int(sum(counts.get(k, {}).values())) for k in keys.values()})
    # a module with several sparse weights (attention's q/k/v_proj_weight) splits its FLOPs by their sizes
    size = {n: model.get_parameter(n).numel() for n in sparse_names}
    per_module = {k: sum(size[n] for n in sparse_names if keys[n] == k) for k in own}
    layers = {n: own[keys[n]] * size[n] // max(per_module[keys[n]], 1) for n in sparse_names}
    total = int(counter.get_total_flops())
    return FlopsProfile(layers=layers, other=total - sum(layers.values()))


def _own_flops(module_flops: Mapping[str, int]) -> dict[str, int]:
    """FLOPs of each module less those of the listed modules inside it (an attention module's out_proj):
    a module's count includes its children's, which must not be attributed to it twice."""
    own = {}
    for key, flops in module_flops.items():
        inner = [c for c in module_flops if c.startswith(key + ".")]
        outermost = [c for c in inner if not any(c.startswith(o + ".") for o in inner)]
        own[key] = flops - sum(module_flops[c] for c in outermost)
    return own


def step_flops(profile: FlopsProfile, densities: Mapping[str, float], batch_size: int, dense_grad: bool = False) -> float:
    """Training FLOPs of one optimizer step on `batch_size` samples."""
    f_sparse = profile.sparse(densities)
    per_sample = 2 * f_sparse + profile.dense if dense_grad else 3 * f_sparse
    return per_sample * batch_size


def dense_training_flops(profile: FlopsProfile, num_train: int, epochs: int = DENSE_REFERENCE_EPOCHS) -> float:
    """FLOPs of training the dense model for `epochs` epochs over `num_train` samples."""
    return 3.0 * profile.dense * num_train * epochs


class FlopsAccountant:
    """Accumulates training FLOPs as a run trains (state is plain numbers, saved for resume).

    world_size: processes training in data parallel, each on its own batch of `batch_size`.
    """

    def __init__(self, profile: FlopsProfile, densities: Mapping[str, float] | None = None, world_size: int = 1):
        self.profile = profile
        self.densities = dict(densities or {})
        self.world_size = world_size
        self.total = 0.0

    def set_densities(self, densities: Mapping[str, float]) -> None:
        self.densities = dict(densities)

    def add_step(self, batch_size: int, dense_grad: bool = False) -> None:
        self.total += step_flops(self.profile, self.densities, batch_size * self.world_size, dense_grad)

    def add_dense_gradient_batch(self, batch_size: int) -> None:
        """The re-exploration's dense gradient of one batch on every rank: f_dense per sample."""
        self.total += self.profile.dense * batch_size * self.world_size

    def state_dict(self) -> dict:
        return {"total": self.total, "densities": dict(self.densities)}

    def load_state_dict(self, state: Mapping) -> None:
        self.total = float(state["total"])
        self.densities = dict(state["densities"])


def format_table(profile: FlopsProfile, densities: Mapping[str, float], shapes: Mapping[str, tuple]) -> str:
    rows = [f"{'layer':44s} {'shape':>22s} {'density':>8s} {'dense MFLOPs':>13s} {'sparse MFLOPs':>14s}"]
    for name, f in profile.layers.items():
        d = densities.get(name, 1.0)
        rows.append(f"{name:44s} {str(tuple(shapes[name])):>22s} {d:8.4f} {f / 1e6:13.2f} {f * d / 1e6:14.2f}")
    dense, sparse = profile.dense, profile.sparse(densities)
    rows.append(f"{'other (not sparse)':44s} {'':>22s} {'':>8s} {profile.other / 1e6:13.2f} {profile.other / 1e6:14.2f}")
    rows.append(f"total forward: dense {dense / 1e9:.4f} GFLOPs ({dense / 2e9:.4f} GMACs), "
                f"sparse {sparse / 1e9:.4f} GFLOPs, sparse/dense {sparse / dense:.4f}")
    return "\n".join(rows)
