"""Each mode function alone, on hand-built log-probabilities; the figures a reader sees."""
from __future__ import annotations

import math

import pytest
import torch

from sparselearning.errors import UsageError
from sparselearning.evaluation.config import EvalConfig, validate_config
from sparselearning.evaluation.diversity import disagreement, kd
from sparselearning.evaluation.ood import ood
from sparselearning.evaluation.predictive import calibration, predict
from sparselearning.evaluation.report import PLOTTERS, _pyplot

NAMES = ["seed=1/model.pth", "seed=2/model.pth"]
TITLE = "DST cnn-small (density 0.5, M=2)"


def _lp(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


# member 0: [0.7,0.3] [0.2,0.8] [0.6,0.4] ; member 1: [0.9,0.1] [0.6,0.4] [0.1,0.9]; labels 0, 1, 1
LP = torch.stack([_lp([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]]), _lp([[0.9, 0.1], [0.6, 0.4], [0.1, 0.9]])])
Y = torch.tensor([0, 1, 1])


def test_predict_hand_computed_and_first_k_curve():
    res = predict(NAMES, LP, Y, "fashionmnist", TITLE, ece_bins=10)
    assert res.value(NAMES[0], "acc") == pytest.approx(2 / 3)
    assert res.value(NAMES[1], "acc") == pytest.approx(2 / 3)
    # ensemble probabilities: [0.8,0.2] [0.4,0.6] [0.35,0.65] -> all three correct
    assert res.value("ensemble", "acc") == 1.0
    nll = -(math.log(0.8) + math.log(0.6) + math.log(0.65)) / 3
    assert res.value("ensemble", "nll") == pytest.approx(nll, abs=1e-12)
    assert res.value("ensemble_first_2", "nll") == pytest.approx(nll, abs=1e-12)
    # ECE of the 2-ensemble, 10 bins: conf 0.8 (bin 7, correct), 0.6 (bin 5, correct), 0.65 (bin 6, correct)
    ece = (0.2 + 0.4 + 0.35) / 3
    assert res.value("ensemble_first_2", "ece10") == pytest.approx(ece, abs=1e-12)
    # member 0 alone: conf 0.7 (bin 6, ok), 0.8 (bin 7, ok), 0.6 (bin 5, wrong)
    assert res.value("ensemble_first_1", "ece10") == pytest.approx((0.3 + 0.2 + 0.6) / 3, abs=1e-12)
    (fig,) = res.figures
    assert fig.kind == "ensemble_size" and fig.data["curve"]["k"] == [1, 2]
    assert fig.data["curve"]["ece"] == [pytest.approx(1.1 / 3), pytest.approx(ece)]
    assert TITLE in fig.data["title"]


def test_predict_of_one_member_draws_no_curve():
    res = predict(NAMES[:1], LP[:1], Y, "fashionmnist", TITLE)
    assert res.figures == [] and res.value("ensemble", "acc") == res.value(NAMES[0], "acc")


def test_calibration_brier_hand_computed():
    res = calibration(NAMES, LP, Y, "fashionmnist", TITLE, ece_bins=15)
    # member 0: (0.3^2 * 2) + (0.2^2 * 2) + (0.6^2 * 2) over 3
    assert res.value(NAMES[0], "brier") == pytest.approx((0.18 + 0.08 + 0.72) / 3, abs=1e-12)
    assert res.extras["reliability"]["ensemble"]["count"] and res.figures[0].kind == "reliability"


def test_disagreement_and_kd_hand_computed():
    res = disagreement(NAMES, LP, Y, [{}, {}], "fashionmnist", TITLE)
    # predictions: member 0 -> 0, 1, 0 ; member 1 -> 0, 0, 1: two of three differ
    assert res.value("pairs_mean", "disagreement") == pytest.approx(2 / 3)
    # mean member error 1/3
    assert res.value("pairs_mean", "disagreement_over_error") == pytest.approx(2.0)
    assert any("mask overlap" in n for n in res.notes)
    res = kd(NAMES, LP, "fashionmnist", TITLE)
    p, q = [[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]], [[0.9, 0.1], [0.6, 0.4], [0.1, 0.9]]
    kl_qp = sum(sum(b * math.log(b / a) for a, b in zip(pa, qb)) for pa, qb in zip(p, q)) / 3
    assert res.value(f"{NAMES[1]}||{NAMES[0]}", "kl") == pytest.approx(kl_qp, abs=1e-12)
    assert res.extras["kl"][0][1] == pytest.approx(kl_qp, abs=1e-12)


def test_ood_auroc_hand_computed():
    # one member, two classes: logits [a, 0] give msp -sigmoid(|a|); ID a = 3, 2 ; OoD a = 0.5, 2.5
    id_logits = torch.tensor([[[3.0, 0.0], [2.0, 0.0]]])
    ood_logits = {"gaussian": torch.tensor([[[0.5, 0.0], [2.5, 0.0]]])}
    res = ood(NAMES[:1], id_logits, ood_logits, ["msp"], "fashionmnist", TITLE)
    # OoD scores -0.622, -0.924 vs ID -0.953, -0.881: 3 of the 4 (OoD, ID) pairs ranked right
    assert res.value("ensemble", "msp_auroc", split="ood:gaussian") == pytest.approx(0.75)
    assert res.value(NAMES[0], "msp_auroc", split="ood:gaussian") == pytest.approx(0.75)


# --------------------------------------------------------------------------- figures
def _axes_of(kind: str, data: dict):
    plt = _pyplot()
    fig = PLOTTERS[kind](plt, data)
    try:
        return fig, [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    finally:
        plt.close(fig)


def _titles(fig, axes) -> str:
    return " ".join([fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in axes])


@pytest.mark.parametrize("mode", ["predict", "calibration", "disagreement", "KD", "ood"])
def test_every_figure_names_method_and_dataset_and_labels_its_axes(mode):
    id_logits = LP.exp().log().float()
    results = {"predict": lambda: predict(NAMES, LP, Y, "fashionmnist", TITLE),
               "calibration": lambda: calibration(NAMES, LP, Y, "fashionmnist", TITLE),
               "disagreement": lambda: disagreement(NAMES, LP, Y, [{"w": torch.tensor([1, 0], dtype=torch.bool)},
                                                                   {"w": torch.tensor([1, 1], dtype=torch.bool)}],
                                                    "fashionmnist", TITLE),
               "KD": lambda: kd(NAMES, LP, "fashionmnist", TITLE),
               "ood": lambda: ood(NAMES, id_logits, {"mnist": id_logits.flip(2)}, ["msp"], "fashionmnist", TITLE)}
    for figure in results[mode]().figures:
        fig, axes = _axes_of(figure.kind, figure.data)
        text = _titles(fig, axes)
        assert "DST" in text and "fashionmnist" in text, text
        for ax in axes:
            assert ax.get_xlabel() and ax.get_ylabel(), (figure.kind, ax.get_title())
        if figure.kind in ("heatmaps", "kl"):  # every cell's value is written on it
            for ax in axes:
                assert len(ax.texts) == len(NAMES) ** 2
        if figure.kind == "ood":
            assert "density" in axes[1].get_ylabel()


def test_corruption_figure_legend_names_the_boxes():
    from sparselearning.evaluation.corruption import corruption

    inputs = [(name, LP, Y, sev) for name in ("contrast", "fog") for sev in range(1, 6)]
    res = corruption(NAMES, inputs, "generated", "fashionmnist", TITLE)
    fig, axes = _axes_of("corruption", res.figures[0].data)
    assert "DST" in _titles(fig, axes) and "fashionmnist" in _titles(fig, axes)
    for ax in axes:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("box" in s for s in labels) and any("members" in s for s in labels)
        assert ax.get_xlabel() == "corruption severity"


# --------------------------------------------------------------------------- flags
def test_ece_bins_bound_and_device_check():
    with pytest.raises(UsageError, match="--ece-bins"):
        validate_config(EvalConfig(resume=".", ece_bins=100_000_000))
    with pytest.raises(UsageError, match="--device"):
        validate_config(EvalConfig(resume=".", device="tpu"))
    assert validate_config(EvalConfig(resume=".", device="cpu")).type == "cpu"
