"""Schedules: the death rate over training steps, and one run's plan of epochs (LR, warm-up, phases).

Epochs are 1-based, as in the paper's scripts: the rate returned for epoch e is the one used
while training epoch e; "after epoch E" means once E epochs are complete.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

DEATH_SCHEDULES = ("constant", "cosine", "linear")


def death_rate(schedule: str, base_rate: float, step: int, total_steps: int, final_rate: float = 0.005) -> float:
    """Death rate at optimizer step `step` of `total_steps`.

    constant: base_rate throughout (what the paper's CIFAR code effectively applied);
    cosine:   cosine annealing from base_rate to final_rate over training (RigL);
    linear:   straight line from base_rate to final_rate.
    """
    if schedule == "constant" or total_steps <= 0:
        return base_rate
    t = min(max(step / total_steps, 0.0), 1.0)
    if schedule == "cosine":
        return final_rate + (base_rate - final_rate) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return base_rate + (final_rate - base_rate) * t
    raise ValueError(f"unknown death-rate schedule {schedule!r}; choose one of {', '.join(DEATH_SCHEDULES)}")


def step_lr(epoch: int, epochs: int, base_lr: float, gamma: float = 0.1) -> float:
    """The paper's step schedule: x0.1 after epoch floor(E/2) and again after floor(3E/4)."""
    milestones = (epochs // 2, (3 * epochs) // 4)
    return base_lr * gamma ** sum(epoch > m for m in milestones)


@dataclass(frozen=True)
class Schedule:
    """One run's plan, epoch by epoch: the LR, the warm-up, and the ticket phases.

    lr_steps:     (E, lr) pairs, E non-decreasing from 0: after E completed epochs the LR is lr
                  (of pairs with the same E the later wins).
    phase_starts: completed-epoch counts at which ticket phases begin. Epochs before the first
                  phase explore (no ticket); every later start is preceded by a re-exploration.
    warmup:       epochs of linear per-iteration warm-up to the scheduled LR.
    restart_death_rate: the death-rate schedule starts over in every phase (the ImageNet code).
    info:         extra (name, value) pairs reported in summary.json.
    """

    epochs: int
    lr_steps: tuple[tuple[int, float], ...]
    phase_starts: tuple[int, ...] = (0,)
    warmup: int = 0
    restart_death_rate: bool = False
    info: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError("a schedule needs at least one epoch")
        starts = [e for e, _ in self.lr_steps]
        if not starts or starts[0] != 0 or any(b < a for a, b in zip(starts, starts[1:])):
            raise ValueError("lr_steps must start at epoch 0 and not go back in time")
        if not self.phase_starts or any(b <= a for a, b in zip(self.phase_starts, self.phase_starts[1:])) or \
                not 0 <= self.phase_starts[0] or self.phase_starts[-1] >= self.epochs:
            raise ValueError("phase_starts must increase within [0, epochs)")
        if not 0 <= self.warmup < self.epochs:
            raise ValueError("the warm-up must be shorter than the run")

    @property
    def reexplore_epochs(self) -> tuple[int, ...]:
        """Epochs after which the large re-exploration runs (the paper's R1)."""
        return self.phase_starts[1:]

    @property
    def num_tickets(self) -> int:
        return len(self.phase_starts)

    def lr(self, epoch: int) -> float:
        value = self.lr_steps[0][1]
        for start, lr in self.lr_steps:
            if epoch > start:
                value = lr
        return value

    def warmup_fraction(self, epoch: int, iteration: int, iterations: int) -> float:
        """Linear warm-up per iteration: (k + 1) / (warmup x iterations) at global iteration k."""
        if epoch > self.warmup:
            return 1.0
        return ((epoch - 1) * iterations + iteration + 1) / (self.warmup * iterations)

    def phase(self, epoch: int) -> int:
        """-1 during exploration, else the phase (= ticket index) of this epoch."""
        return sum(epoch > s for s in self.phase_starts) - 1

    def phase_bounds(self, phase: int) -> tuple[int, int]:
        """(completed epochs at its start, at its end)."""
        edges = (*self.phase_starts, self.epochs)
        return edges[phase], edges[phase + 1]

    def reexplore_after(self, epoch: int) -> bool:
        return epoch in self.reexplore_epochs

    def phase_starts_at(self, epoch: int) -> bool:
        """True on the first epoch of every phase (where the best-so-far is reset)."""
        return epoch - 1 in self.phase_starts

    def death_rate_restarts(self, steps_per_epoch: int) -> tuple[int, ...]:
        """Optimizer steps after which the death-rate schedule starts over (empty: one schedule)."""
        return tuple(e * steps_per_epoch for e in self.reexplore_epochs) if self.restart_death_rate else ()

    def update_free_windows(self, steps_per_epoch: int, fraction: float) -> tuple[tuple[int, int], ...]:
        """(first, last) optimizer steps, 1-based and inclusive, without topology updates: the last
        `fraction` of every ticket phase (RigL's end of updates, applied per phase), rounded to the
        nearest step. Exploration epochs before the first phase keep updating (no ticket is chosen
        there); the re-exploration between phases is not a periodic update and still runs.
        """
        if fraction <= 0:
            return ()
        windows = []
        for k in range(self.num_tickets):
            start, end = (e * steps_per_epoch for e in self.phase_bounds(k))
            quiet = math.floor(fraction * (end - start) + 0.5)
            if quiet > 0:
                windows.append((end - quiet + 1, end))
        return tuple(windows)

    def describe(self) -> dict:
        return {"epochs": self.epochs, "warmup_epochs": self.warmup, "exploration_epochs": self.phase_starts[0],
                "lr_after_epoch": [[e, lr] for e, lr in self.lr_steps],
                "reexplore_after": list(self.reexplore_epochs), "tickets": self.num_tickets,
                "phases": [list(self.phase_bounds(k)) for k in range(self.num_tickets)],
                "death_rate_restarts_each_phase": self.restart_death_rate, **dict(self.info)}


# ------------------------------------------------------------------ topology updates a plan makes
# The paper's CIFAR runs: 250 epochs of 391 steps (batch 128 on 50,000 images), an update every 1,000 steps.
PAPER_STEPS = 250 * 391
PAPER_UPDATE_FREQUENCY = 1000
PAPER_UPDATES = PAPER_STEPS // PAPER_UPDATE_FREQUENCY  # 97


def count_update_steps(first: int, last: int, update_frequency: int | None,
                       no_update_windows: tuple[tuple[int, int], ...] = ()) -> int:
    """Periodic topology updates at optimizer steps first..last (1-based, inclusive): the multiples of
    update_frequency outside no_update_windows (Masking.is_update_step's rule). None: a fixed mask, 0."""
    if not update_frequency or last < first:
        return 0
    multiples = range(math.ceil(first / update_frequency) * update_frequency, last + 1, update_frequency)
    return sum(not any(a <= s <= b for a, b in no_update_windows) for s in multiples)


def updates_per_phase(schedule: Schedule, update_frequency: int | None, steps_per_epoch: int,
                      no_update_windows: tuple[tuple[int, int], ...] = ()) -> list[dict]:
    """The periodic topology updates of every phase of the plan: the exploration epochs (if any) and each
    ticket phase, as {"phase": -1 for exploration else k, "epochs": [first, last], "updates": n}."""
    edges = [(-1, 0, schedule.phase_starts[0])] if schedule.phase_starts[0] > 0 else []
    edges += [(k, *schedule.phase_bounds(k)) for k in range(schedule.num_tickets)]
    return [{"phase": k, "epochs": [start + 1, end],
             "updates": count_update_steps(start * steps_per_epoch + 1, end * steps_per_epoch, update_frequency,
                                           no_update_windows)}
            for k, start, end in edges]


def suggested_update_frequency(total_steps: int) -> int:
    """The update frequency that gives about the paper's number of periodic updates (97) in total_steps."""
    return max(1, round(total_steps * PAPER_UPDATE_FREQUENCY / PAPER_STEPS))


def too_few_updates(phases: list[dict], update_frequency: int | None, steps_per_epoch: int,
                    minimum: int = 2) -> str | None:
    """One warning line when a phase of a dynamic sparse run has fewer than `minimum` periodic topology
    updates (a shortened paper command: the run is then hardly dynamic), else None. Fixed masks: None."""
    if not update_frequency:
        return None
    short = [p for p in phases if p["updates"] < minimum]
    if not short:
        return None
    total = max(p["epochs"][1] for p in phases) * steps_per_epoch
    names = ["exploration" if p["phase"] < 0 else f"phase {p['phase'] + 1}" for p in short]
    where = "; ".join(f"{name} (epochs {p['epochs'][0]}-{p['epochs'][1]}): {p['updates']}"
                      for name, p in list(zip(names, short))[:3])
    return (f"warning: few topology updates with --update-frequency {update_frequency} at {steps_per_epoch} steps per "
            f"epoch ({where}), so the masks hardly change; --update-frequency {suggested_update_frequency(total)} "
            f"gives about the paper's {PAPER_UPDATES} updates in this run's {total:,} steps")


# ------------------------------------------------------------------ the paper's plans
def step_schedule(epochs: int, base_lr: float, constant: bool = False, gamma: float = 0.1) -> Schedule:
    """individual / DST / PF: step_lr (x0.1 after E/2 and 3E/4), or a constant LR; one ticket."""
    if constant:
        return Schedule(epochs, ((0, base_lr),))
    milestones = (epochs // 2, (3 * epochs) // 4)
    return Schedule(epochs, ((0, base_lr), *((m, base_lr * gamma ** k) for k, m in enumerate(milestones, 1))))


def edst_schedule(epochs: int, epochs_explo: int, model_num: int, base_lr: float, refine_lr: float = 0.01,
                  refine_lr_low: float = 0.001) -> Schedule:
    """EDST (CIFAR): `epochs_explo` exploration epochs at base_lr, then `model_num` refinement phases.

    Each phase lasts T = (epochs - epochs_explo) / model_num epochs (possibly fractional;
    boundaries are rounded up, as in the paper's code), at refine_lr for its first half and
    refine_lr_low after. A re-exploration ends every phase but the last.
    """
    if model_num < 1:
        raise ValueError("model_num must be at least 1")
    if not 0 <= epochs_explo < epochs:
        raise ValueError("epochs_explo must be in [0, epochs)")
    T = (epochs - epochs_explo) / model_num
    starts = (epochs_explo, *(math.ceil(epochs_explo + m * T) for m in range(1, model_num)))
    drops = tuple(math.ceil(epochs_explo + m * T + T / 2) for m in range(model_num))
    steps = [(0, base_lr)]
    for start, drop in zip(starts, drops):
        steps += [(start, refine_lr), (drop, refine_lr_low)]
    return Schedule(epochs, tuple(steps), starts,
                    info=(("lr_drop_after", list(drops)), ("phase_length", T)))


# The ImageNet code's plan for 310 epochs (section 6.4 of the reference notes): phases of 100, 70,
# 70, 70 epochs; x0.1, x0.01, x0.001 of the LR 30, 60, 90 epochs into the first and 0, 30, 60 into
# the others; 5 warm-up epochs.
PAPER_IMAGENET_EPOCHS = 310
PAPER_IMAGENET_REEXPLORE = (100, 170, 240)
PAPER_IMAGENET_LR_STEPS = ((30, 0.1), (60, 0.01), (90, 0.001), (100, 0.1), (130, 0.01), (160, 0.001), (170, 0.1),
                           (200, 0.01), (230, 0.001), (240, 0.1), (270, 0.01), (300, 0.001))
PAPER_IMAGENET_WARMUP = 5


def _scaled(epoch: int, epochs: int) -> int:
    """`epoch` of the paper's 310 scaled to `epochs`, rounded half up (exact at 310)."""
    return (2 * epoch * epochs + PAPER_IMAGENET_EPOCHS) // (2 * PAPER_IMAGENET_EPOCHS)


def paper_imagenet_plan(epochs: int) -> tuple[tuple[int, ...], tuple[tuple[int, float], ...], int]:
    """(re-exploration epochs, (epoch, LR factor) steps, warm-up) of the paper's schedule scaled to `epochs`.

    Every epoch is scaled by epochs / 310; re-explorations that fall on the same epoch, at 0 or
    at the end are dropped (fewer tickets), and the warm-up stays shorter than the run.
    """
    reexplore = tuple(sorted({r for r in (_scaled(e, epochs) for e in PAPER_IMAGENET_REEXPLORE) if 0 < r < epochs}))
    steps = tuple((_scaled(e, epochs), f) for e, f in PAPER_IMAGENET_LR_STEPS)
    warmup = min(_scaled(PAPER_IMAGENET_WARMUP, epochs), epochs - 1)
    return reexplore, steps, warmup


def factor_schedule(epochs: int, base_lr: float, reexplore: tuple[int, ...], lr_factors: tuple[tuple[int, float], ...],
                    warmup: int, restart_death_rate: bool = True) -> Schedule:
    """ImageNet: phases split at `reexplore`; from epoch E on the LR is base_lr x F for each (E, F)."""
    return Schedule(epochs, ((0, base_lr * 1.0), *((e, base_lr * f) for e, f in lr_factors)), (0, *reexplore),
                    warmup, restart_death_rate, info=(("lr_steps", [[e, f] for e, f in lr_factors]),))
