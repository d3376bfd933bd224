"""The command line of ``ensemble_freetickets.py``: parser, flags -> :class:`EvalConfig`, entry point."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

from ..errors import OneLineArgumentParser
from . import metrics as Mx
from .compare import CompareConfig, compare
from .config import EvalConfig, parse_modes
from .runner import evaluate

__all__ = ["build_parser", "config_from_args", "compare_config", "main"]

# Accepted so the original script's command lines still parse; they do nothing here.
_IGNORED_FLAGS = [
    ("--batch-size", dict(type=int)), ("--epochs", dict(type=int)), ("--lr", dict(type=float)),
    ("--momentum", dict(type=float)), ("--log-interval", dict(type=int)), ("--optimizer", {}),
    ("--l1", dict(type=float)), ("--l2", dict(type=float)), ("--fp16", dict(action="store_true")),
    ("--valid_split", dict(type=float)), ("--start-epoch", dict(type=int)), ("--iters", dict(type=int)),
    ("--save-features", dict(action="store_true")), ("--bench", dict(action="store_true")),
    ("--max-threads", dict(type=int)), ("--decay-schedule", {}), ("--nolrsche", dict(action="store_true")),
    ("--nolr_scheduler", dict(action="store_true")), ("--world-size", dict(type=int)),
    ("--mgpu", dict(action="store_true")), ("--multiplier", dict(type=int)),
    ("--no_rewire_extend", dict(action="store_true")), ("--save", {}), ("--decay_frequency", dict(type=int)),
    ("--batch-size-jac", dict(type=int)), ("--print_freq", dict(type=int)), ("--ensemble_size", dict(type=int)),
    ("--output_file", {}), ("--l2_regu", dict(action="store_true")), ("--grow-switch", {}),
    ("--grow-zero", dict(action="store_true")), ("--grow-max", dict(type=float)), ("--start_iter", dict(type=int)),
    ("--growth", {}), ("--death", {}), ("--redistribution", {}), ("--death-rate", dict(type=float)),
    ("--large-death-rate", dict(type=float)), ("--PF-rate", dict(type=float)), ("--density", dict(type=float)),
    ("--sparse", dict(action="store_true")), ("--fix", dict(action="store_true")), ("--sparse-init", {}),
    ("--update-frequency", dict(type=int)),
]


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: not set)"
        return f"{text} (default: {'none' if action.default is None else '%(default)s'})"


def _comma_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip().lower() for t in str(text).split(",") if t.strip()]


def _add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", default=None,
                   help="predict, disagreement, calibration, KD, tsne, ood, corruption, all, or several separated "
                        "by commas (e.g. predict,calibration); required unless --compare")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="folder searched recursively for tickets (model*.pth), e.g. a DST ensemble's parent of "
                        "seed=*/ folders, an EDST M=* folder, a PF folder or dense models; or one ticket file; "
                        "required unless --compare")
    p.add_argument("--compare", nargs="+", default=None, metavar="DIR",
                   help="compare the ensembles in these run folders (DST, EDST, PF, dense, ...; a folder's seed=* "
                        "runs form one ensemble) in the paper's Table 1 layout; a folder without results is "
                        "evaluated first (predict,disagreement,calibration into DIR/eval). Writes "
                        "compare_<run_id>.{json,csv}, compare_latest.* and plots/<run_id>_compare.png into "
                        "--output-dir, default <parent of the first DIR>/compare")
    p.add_argument("--allow-mixed", action="store_true",
                   help="with --compare: allow folders of different models or datasets in one table (the rows "
                        "name theirs)")
    p.add_argument("--members-per-ensemble", type=int, default=None, metavar="K",
                   help="with --compare: each folder holds ensembles of K tickets (in natural order, e.g. DST/ "
                        "with seed=1..9 and K=3: three ensembles), reported as mean ± std over them (default: "
                        "one ensemble per folder, or one per run folder when every run holds several tickets, "
                        "as EDST/M=3/ with several seed=* runs)")
    p.add_argument("--data", "--dataset", dest="dataset", default=None,
                   help="cifar10, cifar100, fashionmnist or mnist; optional (default: the one the tickets "
                        "record), must agree with the tickets")
    p.add_argument("--model", default=None, help="optional (default: the tickets' model); must agree with them")
    p.add_argument("--seed", type=int, default=17,
                   help="seed of the OoD subsets and noise, generated corruptions and the t-SNE subset")
    p.add_argument("--test-batch-size", type=int, default=128, help="evaluation batch size")
    p.add_argument("-j", "--workers", type=int, default=4,
                   help="data-loading processes for ImageNet's val/ (streamed from its image files; the in-memory "
                        "datasets need none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--data-dir", default=None, help="datasets in torchvision's layout (default: ./data)")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="never download a missing dataset (without it, one is downloaded into --data-dir)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--ece-bins", type=int, default=15,
                   help="equal-width ECE bins, 1..10000 (ece_ft14, the original's 14 bins, is always reported too)")
    p.add_argument("--ood-data", default=None,
                   help="comma-separated OoD sets: svhn, cifar10, cifar100, mnist, fashionmnist, gaussian, uniform "
                        "(default: cifar10 -> svhn,cifar100,gaussian,uniform; cifar100 -> svhn,cifar10,gaussian,"
                        "uniform; fashionmnist -> mnist,gaussian,uniform; defaults that cannot be loaded are skipped)")
    p.add_argument("--ood-score", default="msp",
                   help="comma-separated OoD scores: msp, entropy, mi (ensemble only), energy, or all")
    p.add_argument("--cf_c_path", "--cf-c-path", dest="cf_c_path", default=None, metavar="DIR",
                   help="CIFAR-10-C / CIFAR-100-C folder (<corruption>.npy files and labels.npy)")
    p.add_argument("--corruptions", default=None, metavar="generated|standard|all|NAMES",
                   help="corruption mode input: the files in --cf_c_path (standard: the 15 benchmark corruptions; "
                        "all: every file present) or corruptions generated on the fly at 5 severities (generated); "
                        "or comma-separated corruption names (files in --cf_c_path when given, else generated). "
                        "Default: all when --cf_c_path is given, else generated")
    p.add_argument("--tsne-samples", type=int, default=1000, help="fixed test images for t-SNE")
    p.add_argument("--output-dir", default=None, help="where results, plots and the logit cache go (default: "
                                                      "<resume>/eval; with --compare: <parent of the first "
                                                      "DIR>/compare)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the logit cache")
    p.add_argument("--no-cuda", action="store_true", help="same as --device cpu (original flag)")


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(
        prog="ensemble_freetickets.py", formatter_class=_HelpWithDefaults,
        description="Evaluate FreeTickets / DST / EDST / PF / dense ensembles from their ticket files. Each ticket "
                    "runs forward once per input set; logits are cached under <output-dir>/cache, so further modes "
                    "cost no forward pass. Results: <output-dir>/results_<run_id>.{json,csv} (never overwritten; "
                    "results_latest.* are copies of the newest) and <output-dir>/plots/<run_id>_*.png. With "
                    "--compare DIR [DIR ...]: a Table-1 comparison of several run folders instead.")
    _add_eval_flags(p)
    g = p.add_argument_group("ignored", "accepted so the original script's command lines still parse; they do "
                                        "nothing here")
    for flag, kw in _IGNORED_FLAGS:
        if kw.get("action") != "store_true":
            kw = {**kw, "metavar": "V"}
        g.add_argument(flag, dest="ignored_" + flag.strip("-").replace("-", "_"), help="ignored", **kw)
    return p


def config_from_args(args, argv: Sequence[str] | None = None) -> EvalConfig:
    modes, explicit = parse_modes(args.mode)
    scores = _comma_list(args.ood_score) or ["msp"]
    if "all" in scores:
        scores = list(Mx.OOD_SCORES)
    device = "cpu" if args.no_cuda else args.device
    return EvalConfig(
        resume=args.resume, modes=modes, dataset=args.dataset, model=args.model, seed=args.seed,
        test_batch_size=args.test_batch_size, workers=args.workers, progress=not args.no_progress,
        data_dir=args.data_dir, device=device, ece_bins=args.ece_bins,
        ood_data=_comma_list(args.ood_data), ood_score=list(dict.fromkeys(scores)), cf_c_path=args.cf_c_path,
        corruptions=args.corruptions, tsne_samples=args.tsne_samples, output_dir=args.output_dir,
        no_cache=args.no_cache, download=args.download,
        command=list(sys.argv[1:] if argv is None else argv), modes_explicit=explicit,
    )


def compare_config(args: argparse.Namespace, argv: Sequence[str] | None = None) -> CompareConfig:
    """The parsed flags of ``--compare``: the evaluation flags become the template of the evaluations."""
    flags = argparse.Namespace(**{**vars(args), "mode": "predict,disagreement,calibration", "resume": ""})
    template = dataclasses.replace(config_from_args(flags, argv), modes_explicit=False, output_dir=None)
    return CompareConfig(folders=list(args.compare), output_dir=args.output_dir, template=template,
                         command=template.command, allow_mixed=args.allow_mixed,
                         members_per_ensemble=args.members_per_ensemble)


def main(argv: Sequence[str] | None = None) -> dict:
    """Entry point of ``ensemble_freetickets.py`` (wrap with :func:`sparselearning.errors.run_cli`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare is not None:
        return compare(compare_config(args, argv))
    missing = [f for f, v in (("--mode", args.mode), ("--resume", args.resume)) if v is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or pass --compare DIR ...)")
    return evaluate(config_from_args(args, argv))
