"""Masking: turns a PyTorch model into a dynamically sparse one.

The familiar shape of the paper's code is kept (``Masking(optimizer, ...)``,
``add_module(model, density, sparse_init)``, ``step()``, ``truncate_weights(rate)``), but every
algorithm lives in a small pure function (density.py, death.py, growth.py, redistribution.py,
schedules.py) and this class only composes them and keeps the state.

Semantics, chosen on purpose (see the README's "Decisions"):
- What is sparse: the weights of DEFAULT_LAYER_TYPES (every Linear, Conv and ConvTranspose kernel and the
  attention projections), or what layer_types / include / exclude choose; add_module logs a table of the
  sparse and dense parameters. density() is of the sparse layers, model_density() of all parameters.
- Gradients are computed dense. ``step()`` zeroes them at inactive positions before the optimizer
  step, so weights, momentum and Adam moments stay exactly zero there (weight decay cannot
  revive a pruned weight). On a topology-update step the dense gradient is kept for growth.
- A topology update removes weights (death), then regrows the same number (growth) unless a
  redistribution moves budget between layers. Grown weights start at zero with zero optimizer
  state, and so do pruned-then-regrown ones.
- Layers allocated fully dense (ERK promotes some) are never pruned or regrown.
- ``no_update_windows`` (steps, inclusive) switch the periodic updates off, e.g. for the end of every
  ticket phase (Schedule.update_free_windows), so a ticket is not saved with freshly grown weights
  still at zero. Default: none (the paper's code updates to the last step). Re-exploration is not affected.
- ``fused_step`` (default on): for SGD/Adam/AdamW the mask goes inside the optimizer's own update where
  torch's math allows it (fused_step.py), with values equal to the separate gradient pass's.
- Every topology update (periodic or re-exploration) ends with the hooks of ``add_update_hook``,
  e.g. the distributed run's cross-rank mask check.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from . import death, density as density_lib, growth, redistribution
from .fused_step import MaskedStep
from .schedules import DEATH_SCHEDULES, death_rate as scheduled_death_rate

# the modes by name (registries: a new mode is registered in its module, e.g. growth.GROWTH_RULES)
DEATH_MODES = death.DEATH_RULES
GROWTH_MODES = growth.GROWTH_RULES
REDISTRIBUTION_MODES = redistribution.REDISTRIBUTION_RULES
SPARSE_INITS = ("ERK", "ER", "uniform", "pruning", "resume")

log = logging.getLogger(__name__)


# Optimizers for which a zero gradient at a zero weight with zero state leaves weight and state
# exactly zero (weight decay included): masking the gradient is enough, no weight pass is needed.
ZERO_PRESERVING_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


@torch.no_grad()
def zero_outside(tensors: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
    """In place, ``t *= mask`` for each pair (bool masks of t's shape): zero outside, NaN stays NaN.

    The product reads each mask as uint8 0/1, a free view of its bytes: float times uint8 runs
    about 1.6x faster on the CPU than float times bool (that path converts element by element).
    """
    if tensors:
        torch._foreach_mul_(list(tensors), [m.view(torch.uint8) for m in masks])


# Default coverage: every weight matrix or kernel of the standard layers (what someone bringing their own
# model expects to be sparse). nn.MultiheadAttention's out_proj is an nn.Linear; its input projections are
# Parameters of the attention module itself (in_proj_weight, or q/k/v_proj_weight when the dimensions
# differ), also inside nn.TransformerEncoderLayer/DecoderLayer. Norms, biases, embeddings and recurrent
# weights stay dense unless chosen with layer_types= (e.g. adding nn.RNNBase, nn.Embedding) or include=.
# The paper's models hold only Conv2d and Linear weights, so their masks are those of (Conv2d, Linear).
DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.MultiheadAttention)


def _weights_of(module: nn.Module) -> list[str]:
    """The weight-matrix or kernel parameters of one module (its own, not its children's): every
    parameter of two or more dimensions whose name says weight (weight, in_proj_weight, weight_ih_l0...)."""
    return [n for n, p in module.named_parameters(recurse=False) if p is not None and p.dim() > 1 and "weight" in n]


def sparse_layer_names(model: nn.Module,
                       layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES) -> list[str]:
    """Weight names of the layers sparsified by default (and counted per layer by the FLOPs profile), in
    module order: the weights of every module of `layer_types`."""
    return [f"{name}.{w}" if name else w for name, mod in model.named_modules()
            if isinstance(mod, layer_types) for w in _weights_of(mod)]


def coverage_table(model: nn.Module, sparse: Mapping[str, int]) -> str:
    """A compact table of the model's parameters grouped by module type: which are sparse (with their
    active count, `sparse` maps a sparse parameter to it) and which stay dense, plus the dense weight
    matrices by name (those a user may have meant to sparsify)."""
    def kind_of(mod: nn.Module) -> str:  # attention's out_proj is a private subclass of Linear
        return "Linear" if isinstance(mod, nn.Linear) else type(mod).__name__

    owner = {f"{m}.{n}" if m else n: kind_of(mod) for m, mod in model.named_modules()
             for n, _ in mod.named_parameters(recurse=False)}
    groups: dict[tuple[str, str], list[int]] = {}  # (sparse|dense, Type.param) -> [tensors, weights, active]
    dense_matrices = []
    for name, p in model.named_parameters():
        kind = "sparse" if name in sparse else "dense"
        row = groups.setdefault((kind, f"{owner[name]}.{name.rsplit('.', 1)[-1]}"), [0, 0, 0])
        row[0] += 1
        row[1] += p.numel()
        row[2] += sparse.get(name, p.numel())
        if kind == "dense" and p.dim() > 1:
            dense_matrices.append(name)
    total = sum(r[1] for r in groups.values())
    active = sum(r[2] for r in groups.values())
    sparse_total = sum(r[1] for (k, _), r in groups.items() if k == "sparse")
    density = sum(sparse.values()) / max(sparse_total, 1)
    lines = [f"masking: {len(sparse)} sparse weight tensors at density {density:.4f}; model density {active / max(total, 1):.4f} ({active:,} of {total:,} parameters active)",
             f"  {'':6s} {'parameter':36s} {'tensors':>7s} {'weights':>13s} {'density':>8s}"]
    for (kind, what), (tensors, weights, act) in sorted(groups.items(), key=lambda kv: (kv[0][0] != "sparse", kv[0])):
        lines.append(f"  {kind:6s} {what:36s} {tensors:7d} {weights:13,d} {act / max(weights, 1):8.4f}")
    if dense_matrices:
        more = len(dense_matrices) - 6
        shown = ", ".join(dense_matrices[:6]) + (f" and {more} more" if more > 0 else "")
        lines.append(f"  dense weight matrices: {shown} (sparsify them with include= or layer_types=)")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """The settings of a ``Masking`` that a run chooses (flags), as one typed record: ``Masking(optimizer,
    **config.kwargs(), total_steps=..., ...)`` adds what the run's schedule decides."""

    death_rate: float = 0.5
    death_mode: str = "magnitude"
    growth_mode: str = "gradient"
    redistribution_mode: str = "none"
    death_rate_schedule: str = "constant"
    final_death_rate: float = 0.005
    update_frequency: int | None = 1000  # None: a fixed mask (no periodic topology updates)
    threshold: float = 1e-3
    momentum_beta: float = 0.9
    seed: int = 0  # the same on every rank: every rank draws the same masks
    fused_step: bool = True  # the mask inside the optimizer's update (--no-fused-step: a pass of its own)

    def kwargs(self) -> dict:
        return dataclasses.asdict(self)


class InvariantError(RuntimeError):
    """A sparse-training invariant was violated (names the layer)."""


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


class Masking:
    def __init__(self, optimizer: torch.optim.Optimizer, death_rate: float = 0.5,
                 death_mode: str = "magnitude", growth_mode: str = "gradient",
                 redistribution_mode: str = "none", death_rate_schedule: str = "constant",
                 total_steps: int = 0, final_death_rate: float = 0.005,
                 update_frequency: int | None = 1000, threshold: float = 1e-3,
                 death_rate_restarts: Sequence[int] = (),
                 no_update_windows: Sequence[tuple[int, int]] = (),
                 momentum_beta: float = 0.9, seed: int = 0, check_invariants: bool = True,
                 layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
                 include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                 fused_step: bool = True):
        _check_choice(death_mode, DEATH_MODES, "death mode")
        _check_choice(growth_mode, GROWTH_MODES, "growth mode")
        _check_choice(redistribution_mode, REDISTRIBUTION_MODES, "redistribution mode")
        _check_choice(death_rate_schedule, DEATH_SCHEDULES, "death-rate schedule")
        if not 0.0 <= death_rate < 1.0:
            raise ValueError(f"death rate must be in [0, 1), got {death_rate}")
        if update_frequency is not None and update_frequency < 1:
            raise ValueError("update_frequency must be a positive number of steps (or None for a fixed mask)")
        if any(not 1 <= first <= last for first, last in no_update_windows):
            raise ValueError(f"no_update_windows must be (first, last) steps with 1 <= first <= last, "
                             f"got {list(no_update_windows)}")
        self.optimizer = optimizer
        self.base_death_rate = death_rate
        self.death_mode = death_mode
        self.growth_mode = growth_mode
        self.redistribution_mode = redistribution_mode
        self.death_rate_schedule = death_rate_schedule
        self.total_steps = total_steps
        self.final_death_rate = final_death_rate
        self.death_rate_restarts = tuple(sorted(death_rate_restarts))
        self.no_update_windows = tuple((int(a), int(b)) for a, b in no_update_windows)
        self.update_frequency = update_frequency
        self.threshold = threshold
        self.momentum_beta = momentum_beta
        self.check_invariants_after_update = check_invariants
        self.layer_types = layer_types
        self.include = list(include) if include else None
        self.exclude = list(exclude)

        self.generator = torch.Generator().manual_seed(seed)
        self.params: dict[str, nn.Parameter] = {}
        self.dense_params: dict[str, nn.Parameter] = {}  # the model's other parameters (model_density)
        self.masks: dict[str, torch.Tensor] = {}
        self.explored: dict[str, torch.Tensor] = {}
        self.budgets: dict[str, int] = {}
        self.grad_momentum: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.num_updates = 0
        self.update_hooks: list[Callable[["Masking", str], None]] = []
        # the mask inside the optimizer's update (fused_step.py); equal values, one memory pass fewer
        self.fused_step = MaskedStep(optimizer) if fused_step and isinstance(optimizer, ZERO_PRESERVING_OPTIMIZERS) \
            else None

    # ------------------------------------------------------------------ setup
    def select_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The weights to sparsify: those of `layer_types` (default DEFAULT_LAYER_TYPES), or every parameter of
        two or more dimensions matching an `include` pattern; then `exclude` patterns drop some."""
        chosen = {n: model.get_parameter(n) for n in sparse_layer_names(model, self.layer_types)}
        if self.include is not None:
            all_params = dict(model.named_parameters())
            for pattern in self.include:
                hits = [n for n in all_params if fnmatch.fnmatchcase(n, pattern)]
                if not hits:
                    raise ValueError(f"include pattern {pattern!r} matches no parameter")
            chosen = {n: p for n, p in all_params.items()
                      if any(fnmatch.fnmatchcase(n, pat) for pat in self.include) and p.dim() > 1}
        for pattern in self.exclude:
            hits = [n for n in chosen if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ValueError(f"exclude pattern {pattern!r} matches no sparse parameter")
            for n in hits:
                del chosen[n]
        if not chosen:
            raise ValueError("no parameter selected for sparsification")
        return chosen

    def add_module(self, model: nn.Module, density: float = 0.2, sparse_init: str = "ERK",
                   erk_power_scale: float = 1.0, pf_rate: float | None = None,
                   masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """Choose the sparse weights, allocate per-layer densities and draw the initial masks.

        sparse_init: ERK / ER / uniform (random masks with exact per-layer counts), pruning
        (global magnitude pruning keeping 1 - pf_rate, for PF ensembles), resume (mask = w != 0).
        `masks` restores saved masks exactly and overrides sparse_init.
        Logs (logger ``sparselearning.core.masking``, INFO) one table of the sparse and dense parameters.
        """
        _check_choice(sparse_init, SPARSE_INITS, "sparse init")
        self.params = self.select_parameters(model)
        self.dense_params = {n: p for n, p in model.named_parameters() if n not in self.params}
        weights = {n: p.detach() for n, p in self.params.items()}
        if masks is not None:
            missing = set(self.params) - set(masks)
            if missing:
                raise ValueError(f"saved masks lack layers: {', '.join(sorted(missing))}")
            self.masks = {n: masks[n].to(device=p.device, dtype=torch.bool) for n, p in self.params.items()}
        elif sparse_init == "pruning":
            if pf_rate is None or not 0.0 <= pf_rate < 1.0:
                raise ValueError("pruning init needs pf_rate in [0, 1)")
            self.masks = density_lib.global_magnitude_masks(weights, 1.0 - pf_rate)
        elif sparse_init == "resume":
            self.masks = {n: w != 0 for n, w in weights.items()}
        else:
            shapes = {n: tuple(p.shape) for n, p in self.params.items()}
            alloc = density_lib.allocate_densities(sparse_init, shapes, density, erk_power_scale)
            self.masks = {n: density_lib.random_mask(shapes[n], density_lib.count_for_density(p.numel(), alloc[n]),
                                                     self.generator, p.device)
                          for n, p in self.params.items()}
        self.budgets = {n: int(torch.count_nonzero(m)) for n, m in self.masks.items()}
        self.explored = {n: m.clone() for n, m in self.masks.items()}
        if self._needs_momentum:
            self.grad_momentum = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.apply_mask()
        log.info("%s", coverage_table(model, self.budgets))

    @property
    def _needs_momentum(self) -> bool:
        return self.growth_mode in growth.USES_MOMENTUM or self.redistribution_mode in redistribution.USES_MOMENTUM

    @property
    def needs_dense_gradient(self) -> bool:
        """Whether a topology update ranks positions by the dense gradient (FLOPs: charged on update steps)."""
        return self.growth_mode in growth.USES_DENSE_GRADIENT

    @property
    def updatable(self) -> list[str]:
        """Layers that topology updates touch: not fully dense."""
        return [n for n, m in self.masks.items() if self.budgets[n] < m.numel()]

    # ------------------------------------------------------------------ per step
    def _weight_shaped_state(self, p: nn.Parameter) -> list[tuple[str, torch.Tensor]]:
        """The optimizer's per-weight tensors of p (momentum, Adam moments), not its scalars."""
        return [(k, v) for k, v in self.optimizer.state.get(p, {}).items() if torch.is_tensor(v) and v.shape == p.shape]

    @torch.no_grad()
    def apply_mask(self, masks: Mapping[str, torch.Tensor] | None = None) -> None:
        """Zero the weights and their optimizer state outside the masks (a NaN stays NaN)."""
        masks = self.masks if masks is None else masks
        pairs = [(t, masks[name]) for name, p in self.params.items()
                 for t in (p.detach(), *(value for _, value in self._weight_shaped_state(p)))]
        zero_outside([t for t, _ in pairs], [m for _, m in pairs])

    def is_update_step(self, step: int | None = None) -> bool:
        """Whether optimizer step `step` (1-based; default the next one) runs a periodic topology update:
        every update_frequency steps, except inside no_update_windows."""
        step = self.steps + 1 if step is None else step
        return (bool(self.update_frequency) and step % self.update_frequency == 0
                and not any(first <= step <= last for first, last in self.no_update_windows))

    def current_death_rate(self) -> float:
        """The scheduled rate at this step; with death_rate_restarts, the schedule starts over after each."""
        start = max((r for r in self.death_rate_restarts if r < self.steps), default=0)
        end = min((r for r in self.death_rate_restarts if r >= self.steps), default=self.total_steps)
        return scheduled_death_rate(self.death_rate_schedule, self.base_death_rate, self.steps - start, end - start,
                                    self.final_death_rate)

    def add_update_hook(self, hook: Callable[["Masking", str], None]) -> None:
        """Call ``hook(masking, event)`` after every topology update (periodic and re-exploration)."""
        self.update_hooks.append(hook)

    @torch.no_grad()
    def step(self, optimizer_step=None, scaler: "torch.amp.GradScaler | None" = None) -> bool:
        """Replaces optimizer.step(); returns True if a topology update ran.

        optimizer_step: what performs the step (default optimizer.step).
        scaler: the GradScaler of fp16 AMP. The step then goes through ``scaler.step``, and a step
        the scaler skips (inf/NaN gradients) is not counted and runs no topology update: growth
        must never rank non-finite gradients, and the update then comes on the next real step.
        """
        if scaler is not None and scaler.is_enabled():
            scaler.unscale_(self.optimizer)  # found-inf is known from here; scaler.step will not unscale again
            if self._scaler_found_inf(scaler):
                scaler.step(self.optimizer)  # skips the step and records it for scaler.update()
                return False
            optimizer_step = optimizer_step or (lambda: scaler.step(self.optimizer))
        update_now = self.is_update_step()
        self.steps += 1
        params = list(self.params.values())
        grads = [p.grad for p in params]
        if self._needs_momentum and all(g is not None for g in grads):
            moms = [self.grad_momentum[n] for n in self.params]
            torch._foreach_mul_(moms, self.momentum_beta)
            torch._foreach_add_(moms, grads)
        live = [n for n in self.updatable if self.params[n].grad is not None]
        if not update_now and optimizer_step is None and self.fused_step is not None:
            self.fused_step.step({self.params[n]: self.masks[n] for n in live})
        else:
            if not update_now:
                # masked gradient -> inactive weights and optimizer state stay exactly zero (one pass)
                zero_outside([self.params[n].grad for n in live], [self.masks[n] for n in live])
            (optimizer_step or self.optimizer.step)()
        if update_now:
            # the dense gradient is still in p.grad: use it for growth; everything not kept is zeroed after
            self.truncate_weights(self.current_death_rate())
        elif not isinstance(self.optimizer, ZERO_PRESERVING_OPTIMIZERS):
            zero_outside([p.detach() for p in params], [self.masks[n] for n in self.params])
        return update_now

    def _scaler_found_inf(self, scaler: "torch.amp.GradScaler") -> bool:
        """Whether the scaler found inf/NaN gradients for this optimizer (after unscale_).

        The same read GradScaler.step makes itself before it decides to skip (one host sync it
        would pay anyway); torch exposes it only through this accessor.
        """
        found = scaler._found_inf_per_device(self.optimizer)
        return bool(sum(v.item() for v in found.values()))

    # ------------------------------------------------------------------ topology update
    def truncate_weights(self, rate: float, grads: Mapping[str, torch.Tensor] | None = None) -> dict[str, int]:
        """One prune-and-regrow cycle with death rate `rate`. Returns the per-layer removed counts.

        Gradient growth reads `grads` (default: each weight's .grad, which must be the dense
        gradient of a recent batch).
        """
        removed = self._prune_and_regrow(rate, grads)
        self._after_update(f"topology update {self.num_updates} (step {self.steps}, rate {rate:.4g})")
        return removed

    def reexplore(self, rate: float, grads: Mapping[str, torch.Tensor] | None = None) -> dict[str, int]:
        """EDST's re-exploration between phases: one large prune-and-regrow with rate `rate` (q).

        Gradient growth reads `grads` or each weight's .grad: the dense gradient of one batch
        (FlopsAccountant.add_dense_gradient_batch charges it).
        """
        removed = self._prune_and_regrow(rate, grads)
        self._after_update(f"re-exploration {self.num_updates} (step {self.steps}, rate {rate:.4g})")
        return removed

    def _after_update(self, event: str) -> None:
        if self.check_invariants_after_update:
            self.check_invariants()
        for hook in self.update_hooks:
            hook(self, event)

    @torch.no_grad()
    def _prune_and_regrow(self, rate: float, grads: Mapping[str, torch.Tensor] | None) -> dict[str, int]:
        names = self.updatable
        if not names or rate <= 0:
            self.apply_mask()  # nothing moves, but an update step's dense optimizer step must still be undone
            self.num_updates += 1
            return {}
        weights = {n: self.params[n].detach() for n in names}
        old = {n: self.masks[n] for n in names}
        after = death.DEATH_RULES[self.death_mode](weights, old, {n: self.budgets[n] for n in names}, rate,
                                                   self.threshold)
        kept = {n: int(torch.count_nonzero(after[n])) for n in names}
        removed = {n: self.budgets[n] - kept[n] for n in names}
        # how many each layer regrows: what it lost, or a share of the total by layer score
        score = redistribution.REDISTRIBUTION_RULES[self.redistribution_mode]
        if score is None:
            regrow = removed
        else:
            capacity = {n: after[n].numel() - kept[n] for n in names}
            regrow = redistribution.split_budget(score(weights, after, self.grad_momentum), sum(removed.values()),
                                                 capacity)
        grow = growth.GROWTH_RULES[self.growth_mode]
        new = {n: grow(after[n], regrow[n], growth.GrowthSignals(
            name=n, grad=grads.get(n) if grads is not None else self.params[n].grad,
            momentum=self.grad_momentum.get(n), generator=self.generator)) for n in names}
        # kept weights keep their value and state; pruned and grown ones are zero: grown positions
        # lie outside `after`, so this one pass zeroes both
        self.apply_mask({**self.masks, **after})
        for n in names:
            self.masks[n] = new[n]
            self.budgets[n] = kept[n] + regrow[n]
            self.explored[n] |= new[n]
        momentum_names = [n for n in names if n in self.grad_momentum]
        zero_outside([self.grad_momentum[n] for n in momentum_names], [new[n] for n in momentum_names])
        self.num_updates += 1
        return removed

    # ------------------------------------------------------------------ checks and statistics
    @torch.no_grad()
    def check_invariants(self) -> None:
        """Per-layer count equals its budget; inactive weights and optimizer state are zero; no NaN."""
        def nonzero_where_inactive(t: torch.Tensor, mask: torch.Tensor) -> bool:
            return bool(torch.gt(t != 0, mask).any())  # (t != 0) and not mask, in two byte-sized passes

        for name, p in self.params.items():
            mask, w = self.masks[name], p.detach()
            active = int(torch.count_nonzero(mask))
            if active != self.budgets[name]:
                raise InvariantError(f"{name}: {active} active weights, budget {self.budgets[name]}")
            if not all(torch.isfinite(v) for v in torch.aminmax(w)):  # min and max are NaN if any entry is
                raise InvariantError(f"{name}: weights contain NaN or infinity")
            if nonzero_where_inactive(w, mask):
                raise InvariantError(f"{name}: inactive weights are not zero")
            for key, value in self._weight_shaped_state(p):
                if nonzero_where_inactive(value, mask):
                    raise InvariantError(f"{name}: optimizer state '{key}' is not zero at inactive positions")

    def num_active(self) -> int:
        return sum(self.budgets.values())

    def num_total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    def density(self) -> float:
        """Realised overall density of the sparse layers (active weights over the weights of the sparse
        tensors); parameters left dense (norms, biases, embeddings...) are not counted: see model_density."""
        return self.num_active() / max(self.num_total(), 1)

    def model_density(self) -> float:
        """Active weights over all the model's parameters: the sparse layers' active (mask-on) weights plus
        every parameter left dense. Mask-on, not non-zero: a weight grown at zero is active and trains."""
        dense = sum(p.numel() for p in self.dense_params.values())
        return (self.num_active() + dense) / max(self.num_total() + dense, 1)

    def layer_densities(self) -> dict[str, float]:
        return {n: self.budgets[n] / m.numel() for n, m in self.masks.items()}

    def exploration_rate(self) -> float:
        """In-time over-parameterisation: the fraction of sparse-layer weights ever active."""
        return sum(int(torch.count_nonzero(e)) for e in self.explored.values()) / max(self.num_total(), 1)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        return {
            "masks": {n: m.cpu() for n, m in self.masks.items()},
            "explored": {n: e.cpu() for n, e in self.explored.items()},
            "budgets": dict(self.budgets),
            "grad_momentum": {n: t.cpu() for n, t in self.grad_momentum.items()},
            "steps": self.steps,
            "num_updates": self.num_updates,
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore everything needed to continue exactly (call after add_module on the same model).

        States written before this version also hold "densities" and "config": both are ignored.
        """
        if set(state["masks"]) != set(self.params):
            raise ValueError("saved masks are for different layers than this model's sparse layers")
        for n, p in self.params.items():
            if tuple(state["masks"][n].shape) != tuple(p.shape):
                raise ValueError(f"saved mask for {n} has shape {tuple(state['masks'][n].shape)}, "
                                 f"the model's is {tuple(p.shape)}")
        self.masks = {n: state["masks"][n].to(p.device, torch.bool) for n, p in self.params.items()}
        self.explored = {n: state["explored"][n].to(p.device, torch.bool) for n, p in self.params.items()}
        self.budgets = {n: int(v) for n, v in state["budgets"].items()}
        self.grad_momentum = {n: t.to(self.params[n].device) for n, t in state.get("grad_momentum", {}).items()}
        if self._needs_momentum and not self.grad_momentum:
            self.grad_momentum = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.steps = int(state["steps"])
        self.num_updates = int(state.get("num_updates", 0))
        self.generator.set_state(state["generator_state"])
        self.apply_mask()

    # ------------------------------------------------------------------ distributed
    def broadcast_masks(self, src: int = 0) -> None:
        """Make every rank's masks equal to rank `src`'s (call after init when ranks might differ)."""
        from .distributed import broadcast_masks

        broadcast_masks(self.masks, src)
        self.budgets = {n: int(torch.count_nonzero(m)) for n, m in self.masks.items()}
        self.apply_mask()

    def assert_masks_in_sync(self) -> None:
        """Raise on every rank if any rank's masks differ (a cheap all-reduced checksum)."""
        from .distributed import assert_masks_in_sync

        assert_masks_in_sync(self.masks)
