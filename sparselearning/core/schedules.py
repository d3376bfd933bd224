"""Schedules as pure functions: the death rate over training steps and the learning rate per epoch.

Epochs are 1-based, as in the paper's scripts: the rate returned for epoch e is the one used
while training epoch e.
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
class EDSTSchedule:
    """EDST: exploration for `epochs_explo` epochs, then `model_num` refinement phases.

    Each refinement phase lasts T = (epochs - epochs_explo) / model_num epochs (possibly
    fractional; boundaries are rounded up, as in the paper's code). Within a phase the LR is
    `refine_lr` for the first half and `refine_lr_low` for the second. A re-exploration
    (a large prune-and-regrow with the large death rate) happens at the end of every phase but
    the last. Ticket k is the best-validation epoch within phase k.
    """

    epochs: int
    epochs_explo: int
    model_num: int
    refine_lr: float = 0.01
    refine_lr_low: float = 0.001

    def __post_init__(self):
        if self.model_num < 1:
            raise ValueError("model_num must be at least 1")
        if not 0 <= self.epochs_explo < self.epochs:
            raise ValueError("epochs_explo must be in [0, epochs)")

    @property
    def phase_length(self) -> float:
        return (self.epochs - self.epochs_explo) / self.model_num

    @property
    def reexplore_epochs(self) -> tuple[int, ...]:
        """Epochs after which the large re-exploration runs (the paper's R1)."""
        T = self.phase_length
        return tuple(math.ceil(self.epochs_explo + m * T) for m in range(1, self.model_num))

    @property
    def lr_drop_epochs(self) -> tuple[int, ...]:
        """Epochs after which the LR drops to refine_lr_low (the paper's R2)."""
        T = self.phase_length
        return tuple(math.ceil(self.epochs_explo + m * T + T / 2) for m in range(self.model_num))

    def phase(self, epoch: int) -> int:
        """-1 during exploration, else the refinement phase (= ticket index) of this epoch."""
        if epoch <= self.epochs_explo:
            return -1
        ends = self.reexplore_epochs
        return sum(epoch > e for e in ends)

    def lr(self, epoch: int, base_lr: float) -> float:
        k = self.phase(epoch)
        if k < 0:
            return base_lr
        return self.refine_lr_low if epoch > self.lr_drop_epochs[k] else self.refine_lr

    def reexplore_after(self, epoch: int) -> bool:
        return epoch in self.reexplore_epochs

    def phase_starts(self, epoch: int) -> bool:
        """True on the first epoch of each refinement phase (where the best-so-far is reset)."""
        return epoch == self.epochs_explo + 1 or (epoch - 1) in self.reexplore_epochs
