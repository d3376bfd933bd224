"""One evaluation run: check everything, then run the modes on shared logits and write the results.

Order matters for bad input: flags, tickets (each loaded and checked, models built), the test set
and every mode's inputs are checked before the output folder is created, so a one-line error leaves
nothing behind.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import ticket_masks
from ..errors import UsageError
from ..provenance import provenance
from . import metrics as Mx
from .config import RESULT_COLUMNS, EvalConfig, validate_config
from .corruption import corruption
from .diversity import disagreement, kd
from .inputs import (TestSet, corruption_sources, load_ood_sets, load_test_set, ood_source, plan_corruptions,
                     tsne_subset)
from .logits import LogitStore
from .ood import ood
from .predictive import calibration, predict
from .records import ModeResult
from .report import draw, fmt, print_result, reserve_run_id, write_rows
from .tickets import (Entry, build_model, check_members, discover_snapshot_runs, discover_tickets, load_entries, plain,
                      rel_name, ticket_spec)
from .tsne import tsne

__all__ = ["Evaluation", "evaluate"]


class Evaluation:
    """The checked inputs of a run (:meth:`prepare`) and the run itself (:meth:`run`).

    Every attribute exists from the start; those below "checked inputs" are None (or empty) until
    :meth:`prepare` has filled them.
    """

    def __init__(self, cfg: EvalConfig, out: Callable[[str], None] = print):
        self.cfg = cfg
        self.out = out
        # checked inputs (prepare)
        self.device: torch.device | None = None
        self.root: Path | None = None  # the folder of tickets
        self.out_dir: Path | None = None
        self.members: list[Entry] = []
        self.M = 0
        self.model_name: str | None = None
        self.dataset: str | None = None
        self.modes: list[str] = []  # those that run (cfg.modes less the skipped ones)
        self.test: TestSet | None = None
        self.store: LogitStore | None = None
        self.snapshot_runs: list = []  # tsne: (run folder, snapshot files)
        self.corruption_plan = None  # corruption: inputs.plan_corruptions
        self.ood_sets: dict = {}  # ood: name -> images
        # the run (run)
        self.run_id: str | None = None
        self._created_out_dir = False
        self._test_lp: torch.Tensor | None = None  # test_log_probs, computed once
        self.rows: list[dict] = []
        self.extras: dict = {}
        self.plots: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []

    # ------------------------------------------------------------------ checks (nothing written)
    def _skip_or_fail(self, mode: str, reason: str, fix: str) -> None:
        if self.cfg.modes_explicit:
            raise UsageError(f"{mode}: {reason}; {fix}")
        self.skipped[mode] = reason
        self.out(f"note: skipping {mode}: {reason} ({fix})")
        self.modes.remove(mode)

    def _load_members(self, root: Path) -> None:
        c = self.cfg
        paths = discover_tickets(root, exclude=[self.out_dir])
        if not paths:
            raise UsageError(f"no tickets (*.pth) found under {root}; point --resume at a training run folder "
                             f"(it holds model.pth or model_<k>.pth)")
        self.members = load_entries(paths, self.root)
        self.model_name, self.dataset = check_members(self.members, c.model, c.dataset)
        seen: dict[str, str] = {}
        for e in self.members:
            if e.sha256 in seen:
                self.out(f"warning: {e.name} is an identical copy of {seen[e.sha256]}; it counts twice")
            seen.setdefault(e.sha256, e.name)
            if e.ticket.get("role") == "snapshot":
                self.out(f"warning: {e.name} is a per-epoch snapshot, not a selected ticket; it is evaluated "
                         f"as a member (snapshots belong in a snapshots/ folder)")

    def _check_snapshots(self, root: Path) -> None:
        """Snapshots for t-SNE: each one loaded and checked now, read again (one at a time) by the mode."""
        self.snapshot_runs = discover_snapshot_runs(root, exclude=[self.out_dir])
        n_pts = sum(len(f) for _, f in self.snapshot_runs)
        if not self.snapshot_runs or n_pts + self.M < 3:
            why = (f"no per-epoch snapshots (snapshots/epoch_<e>.pth) under {root}" if not self.snapshot_runs
                   else f"only {n_pts + self.M} checkpoints under {root}, t-SNE needs at least 3")
            self._skip_or_fail("tsne", why, "train with --save-every K to record function-space trajectories")
            return
        for _, files in self.snapshot_runs:
            for path in files:
                check_members([self.members[0]] + load_entries([path], self.root), what="snapshot")

    def _check_modes(self, root: Path) -> None:
        if self.dataset == "imagenet":
            for mode in ("ood", "corruption", "tsne"):
                if mode in self.modes:
                    self._skip_or_fail(mode, "is not available for ImageNet here",
                                       "use predict, disagreement, calibration or KD")
        for mode in ("disagreement", "KD"):
            if mode in self.modes and self.M < 2:
                self._skip_or_fail(mode, f"needs at least 2 tickets, found {self.M} under {root}",
                                   "point --resume at an ensemble's folder")
        if "tsne" in self.modes:
            self._check_snapshots(root)
        if "corruption" in self.modes:
            self.corruption_plan = plan_corruptions(self.cfg, self.dataset)
        if "ood" in self.modes:
            self.ood_sets, ood_notes = load_ood_sets(self.dataset, self.test, self.cfg, self.out)
            self.notes += ood_notes
            if not self.ood_sets:
                self._skip_or_fail("ood", "no OoD set could be loaded", "pass --ood-data gaussian,uniform or put "
                                   "the OoD datasets in --data-dir")

    def prepare(self) -> None:
        c = self.cfg
        self.device = validate_config(c)
        root = Path(c.resume).expanduser()
        if not root.exists():
            raise UsageError(f"--resume {c.resume} does not exist; point it at a folder of tickets (model*.pth)")
        self.root = root if root.is_dir() else root.parent
        self.out_dir = Path(c.output_dir).expanduser() if c.output_dir else self.root / "eval"
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UsageError(f"--output-dir {self.out_dir} is a file; pass a folder")
        self._load_members(root)
        self.M = len(self.members)
        self.modes = list(c.modes)
        self.test = load_test_set(self.dataset, self.members[0].ticket, c, self.members[0].name)
        specs = {}
        for e in self.members:
            specs[e.sha256], note = ticket_spec(e, self.test.spec)
            if note:
                self.notes.append(note)
        models = {e.sha256: build_model(e, self.device) for e in self.members}
        self._check_modes(root)
        self.store = LogitStore(self.out_dir / "cache" / self.dataset, self.test.spec.num_classes, self.device,
                                c.test_batch_size, not c.no_cache, self.out, specs, models, workers=c.workers,
                                show_progress=c.progress)
        self.store.keep.add(self.test.source.key)

    # ------------------------------------------------------------------ modes
    @property
    def names(self) -> list[str]:
        return [e.name for e in self.members]

    @property
    def title(self) -> str:
        """Method and model for figure titles, e.g. 'EDST cnn-small (density 0.2, M=3)'."""
        kinds = list(dict.fromkeys(str(e.ticket.get("kind", "?")) for e in self.members))
        dens = [e.ticket.get("density") for e in self.members if e.ticket.get("density") is not None]
        density = f"density {fmt(sum(float(d) for d in dens) / len(dens))}, " if dens else ""
        return f"{'+'.join(kinds)} {self.model_name} ({density}M={self.M})"

    def test_logits(self) -> torch.Tensor:
        return self.store.stack(self.members, self.test.source)

    def test_log_probs(self) -> torch.Tensor:
        """(M, N, C) float64, computed once and shared by every mode."""
        if self._test_lp is None:
            self._test_lp = Mx.log_probs_from_logits(self.test_logits())
        return self._test_lp

    def _corruption_inputs(self):
        for name, src, sev in corruption_sources(self.corruption_plan, self.cfg, self.test):
            lp = Mx.log_probs_from_logits(self.store.stack(self.members, src))
            src.release()
            yield name, lp, src.labels, sev

    def _tsne_inputs(self) -> tuple[list[dict], torch.Tensor, list[str], torch.Tensor]:
        idx, sub = tsne_subset(self.test, self.cfg.tsne_samples, self.cfg.seed)
        vectors, points, runs = [], [], []
        for run_dir, files in self.snapshot_runs:
            run_name = rel_name(run_dir, self.root) if run_dir != self.root else "."
            runs.append(run_name)
            for e in load_entries(files, self.root):
                self.store.specs.setdefault(e.sha256, ticket_spec(e, self.test.spec)[0])
                logits = self.store.logits(e, sub, keep_model=False)
                vectors.append(torch.softmax(logits.double(), 1).flatten())
                points.append({"run": run_name, "name": e.name, "epoch": plain(e.ticket.get("epoch")),
                               "kind": "snapshot"})
        run_of = {run_dir.resolve(): (rel_name(run_dir, self.root) if run_dir != self.root else ".")
                  for run_dir, _ in self.snapshot_runs}
        for e in self.members:
            logits = self.store.logits(e, self.test.source)[idx]
            vectors.append(torch.softmax(logits.double(), 1).flatten())
            points.append({"run": run_of.get(e.path.parent.resolve()), "name": e.name,
                           "epoch": plain(e.ticket.get("epoch")), "kind": "ticket"})
        return points, torch.stack(vectors), runs, idx

    def run_mode(self, mode: str) -> ModeResult:
        c, names, ds, title = self.cfg, self.names, self.dataset, self.title
        y = self.test.labels
        if mode == "predict":
            return predict(names, self.test_log_probs(), y, ds, title, c.ece_bins)
        if mode == "calibration":
            return calibration(names, self.test_log_probs(), y, ds, title, c.ece_bins)
        if mode == "disagreement":
            masks = [ticket_masks(e.ticket) for e in self.members]
            return disagreement(names, self.test_log_probs(), y, masks, ds, title)
        if mode == "KD":
            return kd(names, self.test_log_probs(), ds, title)
        if mode == "ood":
            o_logits = {n: self.store.stack(self.members, ood_source(n, imgs)) for n, imgs in self.ood_sets.items()}
            skipped = [n for n in self.notes if n.startswith("ood set")]
            return ood(names, self.test_logits(), o_logits, c.ood_score, ds, title, skipped)
        if mode == "corruption":
            from ..data import CIFAR_C_STANDARD

            plan = self.corruption_plan
            standard = list(CIFAR_C_STANDARD) if plan.kind != "generated" else []
            return corruption(names, self._corruption_inputs(), plan.kind, ds, title, c.ece_bins, standard,
                              c.cf_c_path)
        if mode == "tsne":
            points, vectors, runs, idx = self._tsne_inputs()
            return tsne(points, vectors, runs, idx, c.seed, ds, title)
        raise ValueError(f"unknown mode {mode!r}")

    def _record(self, res: ModeResult) -> None:
        print_result(res, self.out)
        self.rows += res.rows
        if res.extras is not None:
            self.extras[res.mode] = res.extras
        for fig in res.figures:
            path = self.out_dir / "plots" / f"{self.run_id}_{fig.file}.png"
            draw(fig, path)
            self.plots[fig.key] = str(path)

    # ------------------------------------------------------------------ run
    def _start(self) -> None:
        created = not self.out_dir.exists()
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.run_id = reserve_run_id(self.out_dir)
        except OSError as err:
            if created:
                _remove_empty(self.out_dir)
            raise UsageError(f"cannot write to the output folder {self.out_dir} ({err.strerror or err}); pass a "
                             f"writable --output-dir") from None
        self._created_out_dir = created

    def _abort(self) -> None:
        """Remove what this run started (its reserved results file, a folder it created that stays empty)."""
        try:
            os.unlink(self.out_dir / f"results_{self.run_id}.json")
        except OSError:
            pass
        if self._created_out_dir:
            _remove_empty(self.out_dir)

    def run(self) -> dict:
        self.prepare()
        self._start()
        self.out(f"evaluating {self.M} ticket(s) of {self.model_name} on {self.dataset} ({self.test.n} test images) "
                 f"from {self.root}; device {self.device}; modes: {', '.join(self.modes) or 'none'}")
        for i, e in enumerate(self.members):
            t = e.ticket
            self.out(f"  [{i}] {e.name}  kind={t.get('kind', '?')} seed={t.get('seed', '?')} "
                     f"epoch={t.get('epoch', '?')} density={fmt(t.get('density'))}")
        try:
            for mode in self.modes:
                self._record(self.run_mode(mode))
        except BaseException:
            self._abort()
            raise
        return self._write()

    def _document(self) -> dict:
        c = self.cfg
        for r in self.rows:
            r["run_id"] = self.run_id
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(c).items()}
        config["device_used"] = str(self.device)
        argv = None if c.command is None else ["ensemble_freetickets.py", *c.command]
        return {
            "format": "freetickets-eval", "version": 1, "run_id": self.run_id,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "resume": str(self.root), "output_dir": str(self.out_dir),
            "model": self.model_name, "dataset": self.dataset, "n_test": self.test.n,
            "config": config, "provenance": provenance(argv, self.device),
            "members": [e.describe() for e in self.members],
            "modes_run": self.modes, "skipped": self.skipped, "notes": self.notes,
            "forward_passes": self.store.stats["forward_passes"], "cache_hits": self.store.stats["cache_hits"],
            "columns": list(RESULT_COLUMNS), "rows": [{k: r.get(k) for k in RESULT_COLUMNS} for r in self.rows],
            "extras": self.extras, "plots": self.plots,
        }

    def _write(self) -> dict:
        result = self._document()
        json_path, csv_path = write_rows(self.out_dir, "results", self.run_id, result, RESULT_COLUMNS)
        stats = self.store.stats
        self.out("")
        self.out(f"{len(self.rows)} result rows; forward passes {stats['forward_passes']}, cache hits "
                 f"{stats['cache_hits']}")
        plots = f"; plots: {self.out_dir / 'plots'}" if self.plots else ""
        self.out(f"results: {json_path} and {csv_path.name} (copies: results_latest.*){plots}")
        result["json_path"], result["csv_path"] = str(json_path), str(csv_path)
        return result


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (an earlier run's results or cache): keep it
        pass


def evaluate(cfg: EvalConfig, out: Callable[[str], None] = print) -> dict:
    """Run the evaluation described by ``cfg``; returns the results dict (also written to disk)."""
    return Evaluation(cfg, out).run()
