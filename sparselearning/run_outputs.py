"""What a run leaves beside its tickets for people to look at: metrics.csv, curves.png, TensorBoard events.

All three are built from the run's per-epoch history (the rows of summary.json's "history", one
dict per epoch: epoch, lr, train_loss, train_acc, val_loss, val_acc, [val_top5], phase, density,
exploration_rate, training_flops, topology_updates (periodic updates in the epoch's training steps; empty
for a dense run), epoch_seconds (wall time of the epoch's training and validation)). They are views of
that history and can be rebuilt from it at any time, so on --resume they are simply rewritten from the
restored history.

- :func:`write_metrics_csv`: one row per epoch, stable column order, written atomically;
- :func:`plot_curves`: curves.png (loss, accuracy, LR, density, exploration rate, training FLOPs
  against epoch; EDST phases shaded, re-explorations as vertical lines), written atomically;
- :class:`TensorBoardLog`: the same rows as TensorBoard scalars (optional ``tensorboard`` package).

And what a run says before it trains: :func:`topology_update_plan` (the periodic updates each phase will
make, with a warning when a phase has too few) and :class:`LogLines`, which hands the ``sparselearning``
loggers' lines (e.g. Masking's table of sparse layers) to the run's log once train.log may be written.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from . import checkpoint as ckpt
from .core.schedules import Schedule, too_few_updates, updates_per_phase
from .errors import UsageError

METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
TENSORBOARD_DIR = "tensorboard"

# the engine's row keys in the order a reader expects; any other key follows in first-seen order
KNOWN_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "phase", "density",
                 "exploration_rate", "training_flops", "topology_updates", "epoch_seconds")

# TensorBoard tags: "group/name" puts train and val of one quantity side by side
TENSORBOARD_TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val",
    "train_acc": "accuracy/train", "val_acc": "accuracy/val", "val_top5": "accuracy/val_top5",
    "lr": "lr", "density": "sparsity/density", "exploration_rate": "sparsity/exploration_rate",
    "phase": "phase", "training_flops": "training_flops", "topology_updates": "sparsity/topology_updates",
    "epoch_seconds": "time/epoch_seconds",
}

FIGURE_SIZE = (15.0, 8.0)  # inches; at FIGURE_DPI the PNG is 1500 x 800 pixels
FIGURE_DPI = 100


# ---------------------------------------------------------------------------------- metrics.csv
def metric_columns(history: Sequence[Mapping]) -> list[str]:
    """Columns for these rows: the engine's known keys first (in KNOWN_COLUMNS order), then the rest."""
    present: dict[str, None] = {}
    for row in history:
        present.update(dict.fromkeys(row))
    known = [k for k in KNOWN_COLUMNS if k in present]
    return known + [k for k in present if k not in KNOWN_COLUMNS]


def metrics_csv_text(history: Sequence[Mapping]) -> str:
    """The CSV text: a header, then one line per row; a missing or None value is an empty cell.

    Floats are written with repr (Python's csv default), so they read back exactly with float().
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=metric_columns(history), restval="", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def write_metrics_csv(history: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Write the per-epoch rows to `path` (metrics.csv) atomically: a reader never sees half a file."""
    ckpt.atomic_write_text(metrics_csv_text(history), path)


# ---------------------------------------------------------------------------------- curves.png
def _values(history: Sequence[Mapping], key: str) -> list[float]:
    """The column as floats; None (no validation split, dense run) becomes NaN, a gap in the line."""
    out = []
    for row in history:
        v = row.get(key)
        out.append(float("nan") if v is None else float(v))
    return out


def _has(history: Sequence[Mapping], key: str) -> bool:
    return any(row.get(key) is not None for row in history)


def phases_from_history(history: Sequence[Mapping]) -> list[tuple[int, int]]:
    """(first epoch, last epoch) of each refinement phase (phase >= 0), from the rows' "phase" column.

    Only a run with more than one phase (EDST) has phases worth marking; others get [].
    """
    spans: list[list[int]] = []
    last_phase = None
    for row in history:
        phase = row.get("phase")
        if phase is None or phase < 0:
            last_phase = phase
            continue
        if phase != last_phase:
            spans.append([row["epoch"], row["epoch"]])
        else:
            spans[-1][1] = row["epoch"]
        last_phase = phase
    return [tuple(s) for s in spans] if len(spans) > 1 else []


def _panels(history: Sequence[Mapping]) -> list[tuple[str, str, list[tuple[str, str]], bool]]:
    """(panel title, y-axis label, [(row key, line label)], log y-scale) for each panel."""
    acc_lines = [("train_acc", "train"), ("val_acc", "val top-1")]
    if _has(history, "val_top5"):
        acc_lines.append(("val_top5", "val top-5"))
    return [
        ("Loss", "cross-entropy loss", [("train_loss", "train"), ("val_loss", "val")], False),
        ("Accuracy", "accuracy", acc_lines, False),
        ("Learning rate", "learning rate", [("lr", "lr")], True),
        ("Density", "fraction of weights active", [("density", "density")], False),
        ("Exploration rate", "fraction of weights ever active", [("exploration_rate", "exploration rate")], False),
        ("Training FLOPs", "cumulative training FLOPs", [("training_flops", "training FLOPs")], False),
    ]


def _phase_labels(count: int) -> tuple[str, str]:
    """Legend labels of the two alternating phase colours: "ticket phases 1, 3" and "ticket phase 2"."""
    def label(numbers: list[int]) -> str:
        return f"ticket phase{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"
    return label(list(range(1, count + 1, 2))), label(list(range(2, count + 1, 2)))


def curves_figure(history: Sequence[Mapping], *, title: str, reexplore_after: Iterable[int] = (),
                  phases: Sequence[tuple[int, int]] | None = None, ticket_epochs: Iterable[int] = ()):
    """The matplotlib Figure of curves.png (Agg canvas; pyplot's global state is not touched).

    Every line carries its row key as ``gid`` (e.g. "val_loss") so it can be found again. Phases
    (default: from the rows' "phase" column) are shaded with alternating colours, both in the legend;
    re-explorations are dashed vertical lines between epoch e and e + 1 (they run after epoch e); those
    after the last row's epoch (not run yet) are left out, so the schedule's full list can be passed
    mid-run. ticket_epochs (the epochs whose weights the saved tickets hold) are dotted lines at the epoch.
    Epoch ticks are integers.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    epochs = _values(history, "epoch")
    phases = phases_from_history(history) if phases is None else list(phases)
    last_epoch = max((row["epoch"] for row in history), default=0)
    reexplore_after = [e for e in reexplore_after if e <= last_epoch]  # mid-run: only those that happened
    ticket_epochs = sorted(e for e in set(ticket_epochs) if e <= last_epoch)
    phase_labels = _phase_labels(len(phases))
    axes = fig.subplots(2, 3).flatten()
    for ax, (panel, ylabel, lines, log_scale) in zip(axes, _panels(history)):
        drawn = False
        for key, label in lines:
            if _has(history, key):
                ax.plot(epochs, _values(history, key), marker="." if len(epochs) < 40 else None, label=label, gid=key)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not recorded for this run", ha="center", va="center", transform=ax.transAxes)
        elif log_scale and all(v > 0 for v in _values(history, lines[0][0]) if not math.isnan(v)):
            ax.set_yscale("log")
        for k, (first, last) in enumerate(phases):
            ax.axvspan(first - 0.5, last + 0.5, color=("tab:green" if k % 2 == 0 else "tab:olive"), alpha=0.12,
                       lw=0, gid=f"phase_{k}", label=phase_labels[k] if k < 2 else None)
        for i, e in enumerate(reexplore_after):
            ax.axvline(e + 0.5, color="tab:red", ls="--", lw=1, gid="reexplore",
                       label="re-exploration" if i == 0 else None)
        for i, e in enumerate(ticket_epochs):
            ax.axvline(e, color="tab:purple", ls=":", lw=1.2, gid="ticket_saved",
                       label="ticket saved" if i == 0 else None)
        ax.set_title(panel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize="small")
    return fig


def plot_curves(history: Sequence[Mapping], path: str | os.PathLike, *, title: str,
                reexplore_after: Iterable[int] = (), phases: Sequence[tuple[int, int]] | None = None,
                ticket_epochs: Iterable[int] = ()) -> bool:
    """Write curves.png (1500 x 800 px) atomically; False (nothing written) when there is no epoch yet."""
    if not history:
        return False
    fig = curves_figure(history, title=title, reexplore_after=reexplore_after, phases=phases,
                        ticket_epochs=ticket_epochs)
    ckpt._atomic_write(Path(path), lambda fh: fig.savefig(fh, format="png", dpi=FIGURE_DPI), "wb")
    return True


def curves_title(kind: str, model: str, dataset: str, extra: str = "") -> str:
    """The figure title the engine uses: e.g. "EDST - wrn-28-10 on cifar10 (density 0.2, M=3)"."""
    return f"{kind} - {model} on {dataset}" + (f" ({extra})" if extra else "")


def density_label(density: float | None) -> str:
    """"density 0.2" for a realised 0.1999993995 (3 significant digits: a title, not a folder name); None: "dense"."""
    return "dense" if density is None else f"density {density:.3g}"


# ---------------------------------------------------------------------------------- before training
def topology_update_plan(schedule: Schedule, update_frequency: int | None, steps_per_epoch: int,
                         no_update_windows: tuple[tuple[int, int], ...] = ()) -> list[dict]:
    """The periodic topology updates each phase of the run will make (summary.json's plan); logs one warning
    line (logger ``sparselearning``) when a phase has fewer than 2 of a dynamic mask, naming the
    --update-frequency that gives about the paper's number of updates."""
    phases = updates_per_phase(schedule, update_frequency, steps_per_epoch, no_update_windows)
    warning = too_few_updates(phases, update_frequency, steps_per_epoch)
    if warning:
        logging.getLogger("sparselearning").warning(warning)
    return phases


class LogLines(logging.Handler):
    """Collects the lines of the ``sparselearning`` loggers (INFO and up) while a run is built, and from
    ``forward_to(write)`` on passes them, and every later one, to ``write`` (the run's log: stdout and
    train.log, which may be written only once the run folder is checked). A context manager."""

    def __init__(self, logger: str = "sparselearning"):
        super().__init__(logging.INFO)
        self.logger = logging.getLogger(logger)
        self.pending: list[str] = []
        self.write = None
        self._level = self.logger.level

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        if self.write is None:
            self.pending.append(line)
        else:
            self.write(line)

    def forward_to(self, write) -> None:
        self.write = write
        pending, self.pending = self.pending, []
        for line in pending:
            write(line)

    def __enter__(self) -> "LogLines":
        self.logger.addHandler(self)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)


# ---------------------------------------------------------------------------------- TensorBoard
def check_tensorboard() -> None:
    """UsageError (one line) unless the optional tensorboard package is installed; call it while checking flags."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package, which is not installed; "
                         "pip install tensorboard (or leave out --tensorboard)") from None


class TensorBoardLog:
    """Per-epoch rows as TensorBoard scalars under `log_dir` (step = the row's epoch).

    Needs the optional ``tensorboard`` package; without it the constructor raises a one-line
    UsageError, before anything is written.
    """

    def __init__(self, log_dir: str | os.PathLike):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_epoch(self, row: Mapping) -> None:
        """Every numeric value of the row except the epoch itself; None (not recorded) is left out."""
        step = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch" or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(TENSORBOARD_TAGS.get(key, key), float(value), global_step=step)
        self.writer.flush()  # an epoch is minutes long: make it visible to a running TensorBoard now

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
