import math

import pytest

from sparselearning.core.schedules import EDSTSchedule, death_rate, step_lr


def test_step_lr_250():
    lrs = {e: step_lr(e, 250, 0.1) for e in range(1, 251)}
    assert lrs[1] == lrs[125] == 0.1
    assert lrs[126] == pytest.approx(0.01) and lrs[187] == pytest.approx(0.01)
    assert lrs[188] == pytest.approx(0.001) and lrs[250] == pytest.approx(0.001)


def test_edst_worked_example():
    """§3.2 of the reference: E=450, E_explo=150, M=3."""
    s = EDSTSchedule(450, 150, 3)
    assert s.phase_length == 100
    assert s.lr_drop_epochs == (200, 300, 400)
    assert s.reexplore_epochs == (250, 350)
    table = {1: (0.1, -1), 150: (0.1, -1), 151: (0.01, 0), 200: (0.01, 0), 201: (0.001, 0), 250: (0.001, 0),
             251: (0.01, 1), 300: (0.01, 1), 301: (0.001, 1), 350: (0.001, 1), 351: (0.01, 2), 400: (0.01, 2),
             401: (0.001, 2), 450: (0.001, 2)}
    for epoch, (lr, phase) in table.items():
        assert s.lr(epoch, 0.1) == pytest.approx(lr), epoch
        assert s.phase(epoch) == phase, epoch
    assert [e for e in range(1, 451) if s.reexplore_after(e)] == [250, 350]
    assert [e for e in range(1, 451) if s.phase_starts(e)] == [151, 251, 351]


def test_edst_fractional_phases_match_paper_rounding():
    s = EDSTSchedule(320, 150, 3)
    assert s.reexplore_epochs == (207, 264)
    assert s.lr_drop_epochs == (179, 235, 292)
    T = s.phase_length
    for e in range(151, 321):  # the paper's ticket index floor((e - E_ex - 1) / T)
        assert s.phase(e) == math.floor((e - 151) / T)


def test_edst_rejects_bad_plans():
    with pytest.raises(ValueError):
        EDSTSchedule(100, 100, 3)
    with pytest.raises(ValueError):
        EDSTSchedule(100, 10, 0)


def test_death_rate_schedules():
    assert death_rate("constant", 0.5, 700, 1000) == 0.5
    assert death_rate("cosine", 0.5, 0, 1000) == pytest.approx(0.5)
    assert death_rate("cosine", 0.5, 500, 1000) == pytest.approx((0.5 + 0.005) / 2)
    assert death_rate("cosine", 0.5, 1000, 1000) == pytest.approx(0.005)
    assert death_rate("linear", 0.5, 250, 1000) == pytest.approx(0.5 - 0.495 / 4)
    assert death_rate("linear", 0.5, 2000, 1000) == pytest.approx(0.005)
    with pytest.raises(ValueError):
        death_rate("bogus", 0.5, 1, 10)
