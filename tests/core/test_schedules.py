import math

import pytest

from helpers import paper_imagenet_lr
from sparselearning.core.schedules import (Schedule, death_rate, edst_schedule, factor_schedule, paper_imagenet_plan,
                                           step_schedule)


def test_step_schedule_250():
    s = step_schedule(250, 0.1)  # x0.1 after epoch 125 and after epoch 187
    lrs = {e: s.lr(e) for e in range(1, 251)}
    assert lrs[1] == lrs[125] == 0.1
    assert lrs[126] == pytest.approx(0.01) and lrs[187] == pytest.approx(0.01)
    assert lrs[188] == pytest.approx(0.001) and lrs[250] == pytest.approx(0.001)
    assert s.num_tickets == 1 and s.reexplore_epochs == () and s.phase(1) == 0


@pytest.mark.parametrize("epochs, expected", [
    (1, [0.001]),  # milestones 0 and 0: both drops come before the one epoch
    (2, [0.1, 0.001]),  # milestones 1 and 1: both drops after the first epoch
    (3, [0.1, 0.01, 0.001]),  # milestones 1 and 2
    (7, [0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]),  # milestones 3 and 5
])
def test_step_schedule_short_runs(epochs, expected):
    assert [step_schedule(epochs, 0.1).lr(e) for e in range(1, epochs + 1)] == pytest.approx(expected)
    assert {step_schedule(250, 0.1, constant=True).lr(e) for e in range(1, 251)} == {0.1}


def test_edst_worked_example():
    """§3.2 of the reference: E=450, E_explo=150, M=3."""
    s = edst_schedule(450, 150, 3, 0.1)
    assert dict(s.info)["phase_length"] == 100
    assert dict(s.info)["lr_drop_after"] == [200, 300, 400]
    assert s.reexplore_epochs == (250, 350)
    table = {1: (0.1, -1), 150: (0.1, -1), 151: (0.01, 0), 200: (0.01, 0), 201: (0.001, 0), 250: (0.001, 0),
             251: (0.01, 1), 300: (0.01, 1), 301: (0.001, 1), 350: (0.001, 1), 351: (0.01, 2), 400: (0.01, 2),
             401: (0.001, 2), 450: (0.001, 2)}
    for epoch, (lr, phase) in table.items():
        assert s.lr(epoch) == pytest.approx(lr), epoch
        assert s.phase(epoch) == phase, epoch
    assert [e for e in range(1, 451) if s.reexplore_after(e)] == [250, 350]
    assert [e for e in range(1, 451) if s.phase_starts_at(e)] == [151, 251, 351]
    assert s.describe()["phases"] == [[150, 250], [250, 350], [350, 450]]


def test_edst_fractional_phases_match_paper_rounding():
    s = edst_schedule(320, 150, 3, 0.1)
    assert s.reexplore_epochs == (207, 264)
    assert dict(s.info)["lr_drop_after"] == [179, 235, 292]
    T = (320 - 150) / 3
    for e in range(151, 321):  # the paper's ticket index floor((e - E_ex - 1) / T)
        assert s.phase(e) == math.floor((e - 151) / T)


def test_edst_drop_on_a_phase_start_keeps_the_later_rule():
    """T = 1.2: phase 1 (epoch 4) starts after epoch 3, where its LR drop (ceil(1 + 1.2 + 0.6) = 3) also lands,
    so it trains at the low LR; the drops of phases 3 and 4 (6, 7) come at or after their ends: never."""
    s = edst_schedule(7, 1, 5, 0.1)
    assert s.reexplore_epochs == (3, 4, 5, 6)
    assert [s.lr(e) for e in range(1, 8)] == [0.1, 0.01, 0.001, 0.001, 0.001, 0.01, 0.01]


def test_bad_plans_are_refused():
    with pytest.raises(ValueError):
        edst_schedule(100, 100, 3, 0.1)
    with pytest.raises(ValueError):
        edst_schedule(100, 10, 0, 0.1)
    with pytest.raises(ValueError, match="warm-up"):
        Schedule(5, ((0, 0.1),), warmup=5)
    with pytest.raises(ValueError, match="phase_starts"):
        Schedule(5, ((0, 0.1),), (0, 5))




def test_imagenet_paper_schedule_at_310_epochs():
    reexplore, steps, warmup = paper_imagenet_plan(310)
    assert (reexplore, warmup) == ((100, 170, 240), 5)
    s = factor_schedule(310, 0.1, reexplore, steps, warmup)
    for e in range(5, 310):  # 0-based epoch e is 1-based epoch e + 1
        assert s.lr(e + 1) == pytest.approx(paper_imagenet_lr(e), rel=1e-12), e
    assert [s.phase(e + 1) for e in (0, 99, 100, 169, 170, 239, 240, 309)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [s.phase_bounds(k) for k in range(4)] == [(0, 100), (100, 170), (170, 240), (240, 310)]
    assert s.death_rate_restarts(10) == (1000, 1700, 2400)
    n = 10  # linear warm-up per iteration over 5 epochs, reaching --lr at the end
    fracs = [s.warmup_fraction(e, i, n) for e in range(1, 6) for i in range(n)]
    assert fracs[0] == pytest.approx(1 / 50) and fracs[-1] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(fracs, fracs[1:])) and s.warmup_fraction(6, 0, n) == 1.0


def test_imagenet_paper_schedule_scaled_to_other_lengths():
    # 90 epochs: every epoch x 90/310, rounded half up
    reexplore, steps, warmup = paper_imagenet_plan(90)
    assert reexplore == (29, 49, 70) and warmup == 1
    assert [e for e, _ in steps] == [9, 17, 26, 29, 38, 46, 49, 58, 67, 70, 78, 87]
    # short runs: coinciding re-explorations merge, none at the end, the warm-up shorter than the run
    # by hand: epoch e of 310 becomes floor((8e + 310) / 620) of 4
    assert paper_imagenet_plan(4) == ((1, 2, 3), ((0, 0.1), (1, 0.01), (1, 0.001), (1, 0.1), (2, 0.01), (2, 0.001),
                                                  (2, 0.1), (3, 0.01), (3, 0.001), (3, 0.1), (3, 0.01), (4, 0.001)), 0)
    assert paper_imagenet_plan(2)[0] == (1,) and paper_imagenet_plan(1)[0] == () and paper_imagenet_plan(1)[2] == 0
    for epochs in range(1, 400):
        r, st, w = paper_imagenet_plan(epochs)
        factor_schedule(epochs, 0.1, r, st, w)  # always a valid schedule


def test_death_rate_schedules():
    assert death_rate("constant", 0.5, 700, 1000) == 0.5
    assert death_rate("cosine", 0.5, 0, 1000) == pytest.approx(0.5)
    assert death_rate("cosine", 0.5, 500, 1000) == pytest.approx((0.5 + 0.005) / 2)
    assert death_rate("cosine", 0.5, 1000, 1000) == pytest.approx(0.005)
    # at t = 1/4 cosine and linear differ (at 0, 1/2 and 1 they agree): 0.005 + 0.495 * (1 + cos(pi/4)) / 2
    assert death_rate("cosine", 0.5, 250, 1000) == pytest.approx(0.005 + 0.495 * (1 + 0.5 ** 0.5) / 2)
    assert death_rate("cosine", 0.5, 250, 1000) == pytest.approx(0.42751, abs=1e-5)
    assert death_rate("cosine", 0.5, 750, 1000) == pytest.approx(0.07749, abs=1e-5)
    assert death_rate("linear", 0.5, 250, 1000) == pytest.approx(0.5 - 0.495 / 4)
    assert death_rate("linear", 0.5, 2000, 1000) == pytest.approx(0.005)
    with pytest.raises(ValueError):
        death_rate("bogus", 0.5, 1, 10)
