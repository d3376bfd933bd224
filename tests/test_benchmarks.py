"""Fast checks of the benchmark scripts' logic (no training; a few seconds in all)."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from sparselearning.core.flops import FlopsAccountant, FlopsProfile

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ft():
    return load("flops_table")


@pytest.fixture(scope="module")
def rs():
    return load("reproduce_small")


def test_run_training_flops_matches_the_engines_step_by_step_accounting(ft):
    """The closed form equals FlopsAccountant fed step by step as train_one_epoch feeds it."""
    profile = FlopsProfile(layers={"a": 1000, "b": 3000}, other=50)
    dens = {"a": 0.5, "b": 0.1}
    num_train, bs, dt, epochs = 1000, 128, 7, 5  # 8 steps per epoch, last one of 104 images
    acc = FlopsAccountant(profile, dens)
    step = 0
    for _ in range(epochs):
        for k in range(math.ceil(num_train / bs)):
            step += 1
            size = min(bs, num_train - k * bs)
            acc.add_step(size, dense_grad=step % dt == 0)
    reexplore = 2
    acc.total += reexplore * profile.dense * (num_train - (math.ceil(num_train / bs) - 1) * bs)
    got = ft.run_training_flops(profile, dens, epochs=epochs, num_train=num_train, batch_size=bs,
                                update_frequency=dt, reexplorations=reexplore)
    assert got == pytest.approx(acc.total, rel=1e-12)
    static = ft.run_training_flops(profile, dens, epochs=epochs, num_train=num_train, batch_size=bs,
                                   update_frequency=None)
    assert static == pytest.approx(3 * profile.sparse(dens) * num_train * epochs)


def test_paper_multipliers_for_wrn28_10(ft):
    """EDST M=3 ~0.61, EDST M=7 ~0.57, DST M=3 ~1.02 (reference notes 7.3), by the project's accounting."""
    from models import get_model

    net, _ = ft.build_network("wrn-28-10", get_model("wrn-28-10", num_classes=10), (3, 32, 32))
    ref = 3.0 * net.profile.dense * ft.CIFAR_TRAIN * 250

    def rel(density, epochs, M, reexplore, runs=1):
        f = ft.run_training_flops(net.profile, net.erk(density), epochs=epochs, num_train=ft.CIFAR_TRAIN,
                                  batch_size=ft.CIFAR_BATCH, update_frequency=ft.CIFAR_DT, reexplorations=reexplore)
        return runs * f / ref

    assert net.profile.dense / 2e9 == pytest.approx(5.243, abs=0.01)
    assert rel(0.2, 450, 3, 2) == pytest.approx(0.61, abs=0.01)
    assert rel(0.1, 850, 7, 6) == pytest.approx(0.57, abs=0.01)
    assert rel(0.2, 250, 3, 0, runs=3) == pytest.approx(1.02, abs=0.01)


def test_reproduce_small_claims_and_table(rs):
    def row(method, **kw):
        base = {"method": method, "label": rs.LABELS[method], "n": 3, "M": 3}
        for col in rs.COLUMNS:
            base[col] = kw.get(col, 0.5)
            base[col + "_std"] = kw.get(col + "_std", 0.001)
        return base

    table = [row("dense", acc=90.0, nll=0.3, ece=0.03, ood_auroc=0.8, corrupted_acc=60.0, flops_rel=1.0, params=24000,
                 disagreement=None, kl=None),
             row("deep", acc=91.5, flops_rel=3.0, params=72000, disagreement=0.05, kl=0.03),
             row("static", acc=90.0, flops_rel=0.8, params=15000),
             row("DST", acc=91.2, flops_rel=0.8, params=15000, disagreement=0.06, kl=0.04),
             row("EDST", acc=91.0, nll=0.25, ece=0.02, ood_auroc=0.85, corrupted_acc=59.0, corrupted_acc_std=2.0,
                 flops_rel=0.5, params=15000, disagreement=0.07, kl=0.05),
             row("PF", acc=90.5, flops_rel=3.4, params=15000, disagreement=0.04, kl=0.02)]
    verdicts = {c["claim"]: c["verdict"] for c in rs.claims(table)}
    assert verdicts["EDST ensemble has fewer training FLOPs than one dense model"] == "supported"
    assert verdicts["EDST ensemble beats the single dense model in NLL"] == "supported"
    assert verdicts["EDST ensemble beats the single dense model in corrupted accuracy"] == "inconclusive"
    assert verdicts["DST tickets are more diverse than PF tickets (disagreement and KL)"] == "supported"
    assert rs.fmt_cell(table[0], "acc") == "90.00 ± 0.00"
    assert rs.fmt_cell(table[0], "disagreement") == "-"
