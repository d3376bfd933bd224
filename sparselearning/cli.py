"""Command-line flags of the four CIFAR training scripts, defined once.

Every flag of the paper's scripts keeps its name and meaning so its command lines run as
printed. Flags that did nothing in the original are accepted and marked "(ignored)".
"""
from __future__ import annotations

import argparse
import math

from .errors import OneLineArgumentParser, UsageError
from .core.masking import DEATH_MODES, GROWTH_MODES, REDISTRIBUTION_MODES
from .core.schedules import DEATH_SCHEDULES

SCRIPTS = ("individual", "DST", "EDST", "PF")
DEFAULT_EPOCHS = {"individual": 250, "DST": 250, "EDST": 450, "PF": 250}
IGNORED = "(ignored; kept so the paper's command lines run)"


def add_sparse_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sparse training")
    g.add_argument("--sparse", action="store_true", help="train a sparse network (dynamic unless --fix)")
    g.add_argument("--fix", action="store_true", help="static mask: no topology updates, no EDST re-exploration")
    g.add_argument("--density", type=float, default=0.05, help="overall density of the sparse layers (1 - sparsity)")
    g.add_argument("--sparse-init", default="ERK", choices=["ERK", "ER", "uniform"],
                   help="per-layer density allocation (PF always uses global magnitude pruning)")
    g.add_argument("--erk-power-scale", type=float, default=1.0, help="ERK exponent (0 gives uniform)")
    g.add_argument("--death", default="magnitude", choices=DEATH_MODES, help="which active weights die")
    g.add_argument("--growth", default="gradient", choices=GROWTH_MODES, help="where weights regrow")
    g.add_argument("--redistribution", default="none", choices=REDISTRIBUTION_MODES,
                   help="how the regrowth budget moves between layers")
    g.add_argument("--death-rate", type=float, default=0.5, help="p: fraction of active weights replaced per update")
    g.add_argument("--large-death-rate", type=float, default=0.8, help="q: EDST re-exploration rate between phases")
    g.add_argument("--decay-schedule", default="constant", choices=DEATH_SCHEDULES,
                   help="death-rate schedule; constant reproduces the paper's CIFAR code (its cosine was never applied)")
    g.add_argument("--final-death-rate", type=float, default=0.005, help="end value of cosine/linear death-rate schedules")
    g.add_argument("--death-threshold", type=float, default=1e-3, help="|w| threshold of --death threshold")
    g.add_argument("--update-frequency", type=int, default=1000, help="ΔT: optimizer steps between topology updates")
    g.add_argument("--PF-rate", dest="PF_rate", type=float, default=0.8, help="PF: global pruning rate of the dense model")


def build_parser(script: str) -> OneLineArgumentParser:
    if script not in SCRIPTS:
        raise ValueError(script)
    parser = OneLineArgumentParser(prog=f"main_{script}.py", description=_DESCRIPTIONS[script],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("training")
    g.add_argument("--model", default="", help="model name (see models.MODEL_NAMES), e.g. wrn-28-10")
    g.add_argument("--data", default="cifar10", help="cifar10 | cifar100 | fashionmnist | mnist")
    g.add_argument("--data-dir", default="./data", help="dataset root in torchvision's on-disk layout")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--test-batch-size", type=int, default=128)
    g.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS[script])
    g.add_argument("--lr", type=float, default=0.1)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    g.add_argument("--l2", type=float, default=5e-4, help="weight decay")
    g.add_argument("--seed", type=int, default=17)
    g.add_argument("--valid_split", "--valid-split", dest="valid_split", type=float, default=0.1,
                   help="tail fraction of the training set used for model selection")
    g.add_argument("--nolrsche", "--nolr_scheduler", dest="nolrsche", action="store_true",
                   help="constant LR (no step schedule)")
    g.add_argument("--multiplier", type=int, default=1, help="train multiplier x epochs (schedule stretched too)")
    g.add_argument("--log-interval", type=int, default=100, help="batches between progress-bar updates of the log")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto picks CUDA when present")
    g.add_argument("--no-cuda", action="store_true", help="same as --device cpu")
    g.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16, or fp16 with loss scaling)")
    g.add_argument("-j", "--workers", type=int, default=0, help="data threads (data are in-memory tensors; unused)")
    g.add_argument("--save-every", type=int, default=0, help="also keep a snapshot every K epochs (for tsne)")
    g.add_argument("--output-dir", default="results", help="root of the results tree")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in the run folder")
    g.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue the interrupted run in the run folder (or from CHECKPOINT, a last.pth)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    if script == "EDST":
        g.add_argument("--epochs-explo", type=int, default=150, help="exploration epochs before the refinement phases")
        g.add_argument("--model-num", type=int, default=3, help="M: number of free tickets")
    if script == "PF":
        g.add_argument("--pretrained", "--pretrain", dest="pretrained", default=None,
                       help="dense checkpoint to prune (a ticket from main_individual.py, or a state_dict)")
        g.add_argument("--epochs-fs", type=int, default=80, help=IGNORED)
        g.add_argument("--model-num", type=int, default=3, help=IGNORED)
    add_sparse_args(parser)
    ign = parser.add_argument_group("accepted for compatibility " + IGNORED)
    for flag in ("--l1", "--decay_frequency", "--batch-size-jac", "--world-size", "--iters", "--max-threads",
                 "--start-epoch"):
        ign.add_argument(flag, default=None, help=argparse.SUPPRESS)
    for flag in ("--fp16", "--save-features", "--bench", "--mgpu", "--no_rewire_extend", "--verbose"):
        ign.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    ign.add_argument("--save", default=None, help=argparse.SUPPRESS)
    return parser


_DESCRIPTIONS = {
    "individual": "Train one model (dense by default, sparse with --sparse); one seed = one deep-ensemble member.",
    "DST": "Train one dynamic-sparse network; M runs with different seeds form a DST ensemble.",
    "EDST": "EDST ensemble: one run = exploration + M refinement phases, each yielding a free ticket.",
    "PF": "PF ensemble member: prune a dense checkpoint globally, fine-tune with the mask fixed.",
}


def validate(script: str, args: argparse.Namespace) -> None:
    """Range and consistency checks; raises UsageError naming the flag and the fix."""
    from models import MODEL_NAMES

    from .data import SPECS

    if not args.model:
        raise UsageError(f"--model is required; choose one of: {', '.join(MODEL_NAMES)}")
    if args.model not in MODEL_NAMES:
        raise UsageError(f"unknown model {args.model!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if args.data not in SPECS:
        raise UsageError(f"unknown dataset {args.data!r}; choose one of: {', '.join(SPECS)}")

    for name, value in vars(args).items():  # inf/nan pass the range checks below (or make them pass)
        if isinstance(value, float) and not math.isfinite(value):
            flag = name if name == "valid_split" else name.replace("_", "-")
            raise UsageError(f"--{flag} must be a finite number, got {value}")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: --resume continues the run in the folder, "
                         "--overwrite replaces it; pass one of them")

    def positive(name, value):
        if value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")

    for name in ("epochs", "batch_size", "test_batch_size", "multiplier"):
        positive(name.replace("_", "-"), getattr(args, name))
    if args.update_frequency < 1:
        raise UsageError(f"--update-frequency must be at least 1, got {args.update_frequency}")
    if not 0 < args.density <= 1:
        raise UsageError(f"--density must be in (0, 1], got {args.density}")
    for flag, value in (("death-rate", args.death_rate), ("large-death-rate", args.large_death_rate),
                        ("PF-rate", args.PF_rate), ("valid_split", args.valid_split)):
        if not 0 <= value < 1:
            raise UsageError(f"--{flag} must be in [0, 1), got {value}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if args.l2 < 0 or args.momentum < 0:
        raise UsageError("--l2 and --momentum must be non-negative")
    if args.save_every < 0:
        raise UsageError(f"--save-every must be 0 (off) or a positive number of epochs, got {args.save_every}")
    if script == "EDST":
        positive("model-num", args.model_num)
        if not 0 <= args.epochs_explo < args.epochs:
            raise UsageError(f"--epochs-explo ({args.epochs_explo}) must be in [0, --epochs ({args.epochs})); "
                             f"lower it or raise --epochs")
        if (args.epochs - args.epochs_explo) / args.model_num < 1:
            raise UsageError(f"each of the {args.model_num} refinement phases would last less than one epoch; "
                             f"raise --epochs or lower --model-num")
    if script in ("DST", "EDST") and not args.sparse:
        raise UsageError(f"main_{script}.py trains sparse networks: add --sparse (use main_individual.py for dense)")
    if script == "PF" and not args.pretrained:
        raise UsageError("main_PF.py needs a dense checkpoint: pass --pretrained FILE (from main_individual.py)")
    if args.no_cuda:
        args.device = "cpu"
