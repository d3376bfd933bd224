"""What the evaluation figures show: the max-softmax probability itself in the OoD histogram, distinct colours
for the median and the means in the corruption plot."""
import numpy as np
from matplotlib.colors import to_rgba

from sparselearning.evaluation.report import PLOTTERS, _pyplot


def test_ood_histogram_shows_the_max_softmax_probability_not_its_negative():
    plt = _pyplot()
    # msp scores as ood_scores computes them: minus the ensemble's max probability
    roc = {"svhn": ([-0.95, -0.9, -0.85], [-0.4, -0.3, -0.35], 0.99)}
    fig = PLOTTERS["ood"](plt, {"roc": roc, "score": "msp", "dataset": "cifar10", "title": "t"})
    try:
        hist = fig.axes[1]
        ood = [p for p in hist.patches if p.get_gid() == "ood_svhn"]
        assert ood and min(p.get_x() for p in ood) >= 0.3 - 1e-9
        assert max(p.get_x() + p.get_width() for p in ood) <= 0.4 + 1e-9
        assert "max-softmax probability (lower = more OoD)" in hist.get_xlabel()
        id_xy = np.concatenate([p.get_xy()[:, 0] for p in hist.patches if p.get_gid() == "id"])
        assert id_xy.min() >= 0.85 - 1e-9 and id_xy.max() <= 0.95 + 1e-9
    finally:
        plt.close(fig)
    fig = PLOTTERS["ood"](plt, {"roc": roc, "score": "entropy", "dataset": "cifar10", "title": "t"})
    try:  # any other score is shown as computed
        assert min(p.get_x() for p in fig.axes[1].patches if p.get_gid() == "ood_svhn") < 0
        assert "higher = more OoD" in fig.axes[1].get_xlabel()
    finally:
        plt.close(fig)


def test_corruption_plot_median_and_means_have_distinct_colours():
    plt = _pyplot()
    rng = np.random.default_rng(0)
    data = {"metrics": ["acc", "nll"], "kind": "generated", "title": "t",
            "ensemble": {m: [list(rng.random(4)) for _ in range(5)] for m in ("acc", "nll")},
            "members_mean": {m: list(rng.random(5)) for m in ("acc", "nll")}}
    fig = PLOTTERS["corruption"](plt, data)
    try:
        for ax in fig.axes:
            lines = ax.get_lines()
            means = [ln for ln in lines if ln.get_label().startswith(("members (mean", "ensemble (mean"))]
            medians = [ln for ln in lines if len(ln.get_xdata()) == 2 and ln.get_ydata()[0] == ln.get_ydata()[1]
                       and ln.get_linestyle() == "-" and ln not in means and ln.get_label().startswith("_")
                       and to_rgba(ln.get_color()) != to_rgba("k")]
            assert len(means) == 2 and len(medians) == 5
            colours = {to_rgba(ln.get_color()) for ln in means} | {to_rgba(medians[0].get_color())}
            assert len(colours) == 3
            assert "ensemble: median over corruptions" in [t.get_text() for t in ax.get_legend().get_texts()]
    finally:
        plt.close(fig)
