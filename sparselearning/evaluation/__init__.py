"""Evaluation of FreeTickets ensembles: every mode of the paper from one forward pass per ticket.

``ensemble_freetickets.py`` is a thin wrapper around :func:`main`; library users call
:func:`evaluate` with an :class:`EvalConfig`.

Modules
-------
``config``       modes, :class:`EvalConfig`, flag checks, the device
``tickets``      finding, loading and checking tickets (before anything is written)
``logits``       forward passes and the logit cache (:class:`~.logits.LogitStore`)
``inputs``       the test split, OoD sets, corrupted sets, the t-SNE subset
``predictive``   modes predict and calibration     ``diversity``  disagreement and KD
``ood``          mode ood     ``corruption``  mode corruption     ``tsne``  mode tsne
``records``      what a mode returns (rows, tables, extras, figure data)
``report``       printed tables, results JSON/CSV, PNG figures
``runner``       one run: checks, then modes on shared logits, then the files
``compare``      ``--compare``: several folders in the paper's Table 1 layout (``compare_rows``: its rows)
``cli``          the parser of ``ensemble_freetickets.py``
``metrics``      the metrics themselves (pure functions of tensors)

Pipeline
--------
1. **Discovery.** Every ``*.pth``/``*.pt`` under ``--resume`` (recursively, natural sort of the
   relative path, so ``seed=2`` precedes ``seed=10`` and ``model_2`` precedes ``model_10``) is a
   member, except ``last.pth``/``last.pt`` (resume checkpoints), anything under ``snapshots/``
   (per-epoch tickets, read only by the ``tsne`` mode), hidden files and folders (atomic-write
   temporaries), ``*.tmp`` and the output folder itself. Any other file that is not a ticket is an
   error, never silently skipped.
2. **Validation.** Tickets are loaded with ``weights_only=True``; all members must share model,
   class count, input shape and dataset (a one-line error names the differing ticket); ``--model``
   and ``--dataset``, when given, must agree with them. A damaged ticket (sizes that are not
   positive, values that do not fill the mask, NaN/inf weights, a normalisation std <= 0) is
   refused with one line naming the file. All of this, and every mode's inputs, is checked before
   the output folder is created.
3. **Logits.** Each ticket runs forward once per input set (the test split, each OoD set, each
   corruption file or generated corruption cell, the t-SNE subset for snapshots), with the
   ticket's own training normalisation. Logits are cached as float32 ``.npy`` under
   ``<output>/cache/<dataset>/<input set>/<sha256 of the ticket file>.npy``, so a later run of any
   mode on the same tickets does no forward pass (``--no-cache`` disables reading and writing).
4. **Metrics** come from :mod:`sparselearning.evaluation.metrics` on the cached logits; the ensemble averages
   member probabilities.

Outputs (all under the output folder, default ``<resume>/eval``; nothing is written elsewhere
except datasets downloaded into ``--data-dir``, which ``--no-download`` forbids)::

    results_<run_id>.json   config, provenance, members, every row, matrices, reliability bins, t-SNE points
    results_<run_id>.csv    long format: run_id,mode,dataset,split,corruption,severity,member,metric,value
    results_latest.json     copies of the newest run's two files (the only files ever replaced)
    results_latest.csv
    plots/<run_id>_<name>.png   disagreement, reliability, kl, ood, corruption, tsne, ensemble_size
    cache/...               the logit cache

``run_id`` is the local time ``YYYYmmdd-HHMMSS`` (plus ``-2``, ``-3``... when taken), so no run
overwrites an earlier run's results.

Row conventions (CSV ``member`` column): a member's relative path; ``ensemble`` (mean of all
members' probabilities); ``ensemble_first_<k>``; ``members_mean`` / ``members_std`` (sample std);
``<a>|<b>`` for an unordered pair; ``<b>||<a>`` for KL(p_b || p_a); ``pairs_mean`` for a mean over
pairs. Metrics are fractions: ``acc``, ``nll``, ``brier``, ``ece<B>`` (``--ece-bins`` B, default
15), ``ece_ft14`` (the original code's 14 bins), OoD ``<score>_auroc``, ``<score>_aupr_in`` (ID
positive), ``<score>_aupr_out`` (OoD positive), ``<score>_fpr95_oodpos``, ``<score>_fpr95_idpos``.
"""
from __future__ import annotations

from .cli import build_parser, config_from_args, main
from .compare import CompareConfig, compare
from .config import MODES, RESULT_COLUMNS, EvalConfig, parse_modes
from .runner import Evaluation, evaluate
from .tickets import Entry, check_members, discover_snapshot_runs, discover_tickets, load_entries, natural_key

__all__ = [
    "MODES", "EvalConfig", "Entry", "discover_tickets", "discover_snapshot_runs", "natural_key",
    "load_entries", "check_members", "parse_modes", "Evaluation", "evaluate", "build_parser", "config_from_args",
    "main", "RESULT_COLUMNS", "CompareConfig", "compare",
]
