"""Command-line flags of the training scripts, defined once, and the run schedule they describe.

``common_parser`` builds the flags every training script shares (training, devices, run folder,
sparse training); ``build_parser(script)`` adds the CIFAR scripts' group, and ImageNet/main.py adds
its own group to the same common parser. ``validate`` checks them (one UsageError naming the flag
and the fix) and ``schedule_for`` turns them into the run's ``Schedule``.

Every flag of the paper's scripts keeps its name and meaning so its command lines run as
printed. Flags that did nothing in the original are accepted and marked "(ignored)".
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from models import MODEL_NAMES, get_model

from .core import death, growth, redistribution, schedules
from .core.schedules import DEATH_SCHEDULES, Schedule
from .errors import OneLineArgumentParser, UsageError
from .launch_flags import add_launcher_args, drop_launcher_flags
from .paper_flags import NO_OP_SWITCHES, NO_OP_VALUE_FLAGS, add_ignored_flags
from .preflight import check_lr, check_run_numbers, run_device
from .run_outputs import check_tensorboard
from .runfolder import check_path

SCRIPTS = ("individual", "DST", "EDST", "PF")
DEFAULT_EPOCHS = {"individual": 250, "DST": 250, "EDST": 450, "PF": 250}
IGNORED = "(ignored; kept so the paper's command lines run)"
MAX_TOTAL_EPOCHS = 10 ** 6  # --epochs x --multiplier beyond this is a typo, not a run
GIVEN = "_given_flags"  # namespace attribute: the dests of Given flags that were on the command line


class Given(argparse._StoreAction):
    """A plain store action that also notes that the flag was given (so a default can depend on it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        namespace.__dict__.setdefault(GIVEN, set()).add(self.dest)


def given_flags(args: argparse.Namespace) -> set[str]:
    """Dests of the Given flags on the command line; removed from `args` (they are no flag)."""
    return set(args.__dict__.pop(GIVEN, set()))


def add_sparse_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sparse training")
    g.add_argument("--sparse", action="store_true", help="train a sparse network (dynamic unless --fix)")
    g.add_argument("--fix", action="store_true", help="static mask: no topology updates, no EDST re-exploration")
    g.add_argument("--density", type=float, default=0.05, action=Given,
                   help="overall density of the sparse layers (1 - sparsity); main_PF.py: prune the dense model to this "
                        "density, unless --PF-rate is given (see there)")
    g.add_argument("--sparse-init", default="ERK", choices=["ERK", "ER", "uniform", "pruning"],
                   help="per-layer density allocation; pruning = global magnitude pruning of the weights to --density "
                        "(main_PF.py always prunes its dense checkpoint)")
    g.add_argument("--erk-power-scale", type=float, default=1.0, help="ERK exponent (0 gives uniform)")
    g.add_argument("--death", default="magnitude", choices=death.DEATH_RULES, help="which active weights die")
    g.add_argument("--growth", default="gradient", choices=growth.GROWTH_RULES, help="where weights regrow")
    g.add_argument("--redistribution", default="none", choices=redistribution.REDISTRIBUTION_RULES,
                   help="how the regrowth budget moves between layers")
    g.add_argument("--death-rate", type=float, default=0.5, help="p: fraction of active weights replaced per update")
    g.add_argument("--large-death-rate", type=float, default=0.8, help="q: EDST re-exploration rate between phases")
    g.add_argument("--decay-schedule", default="constant", choices=DEATH_SCHEDULES,
                   help="death-rate schedule; constant reproduces the paper's CIFAR code (its cosine was never applied)")
    g.add_argument("--final-death-rate", type=float, default=0.005, help="end value of cosine/linear death-rate schedules")
    g.add_argument("--death-threshold", type=float, default=1e-3, help="|w| threshold of --death threshold")
    g.add_argument("--update-frequency", type=int, default=1000, help="ΔT: optimizer steps between topology updates")
    g.add_argument("--stop-updates-frac", type=fraction, default=0.0, metavar="F",
                   help="no periodic topology updates in the last fraction F of every ticket phase (the one phase "
                        "of a DST run, each EDST/ImageNet refinement phase; EDST's exploration epochs and its "
                        "re-explorations are not affected), so tickets are not saved with freshly grown weights "
                        "still zero; 0 = update to the end, as the paper")
    g.add_argument("--PF-rate", dest="PF_rate", type=float, default=0.8, action=Given,
                   help="main_PF.py: global pruning rate of the dense model. Given, it wins; else 1 - --density when "
                        "--density is given; else 0.8. The run folder names the resulting density")


def common_parser(prog: str, description: str) -> OneLineArgumentParser:
    """The flags every training script has (CIFAR scripts and ImageNet/main.py): training, devices, runs, sparsity."""
    parser = OneLineArgumentParser(prog=prog, description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = parser.add_argument_group("training")
    g.add_argument("-b", "--batch-size", type=int, default=128, help="batch size (per process under torchrun)")
    g.add_argument("--epochs", type=int, default=250, help="training epochs (before --multiplier)")
    g.add_argument("--lr", type=float, default=0.1, help="base learning rate (not scaled with the world size)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (also the beta of momentum growth)")
    g.add_argument("--seed", type=int, default=17, help="model init, masks, data order (the same on every rank)")
    g.add_argument("--multiplier", type=int, default=1, help="train multiplier x epochs (schedule stretched too)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto picks CUDA when present")
    g.add_argument("--no-cuda", action="store_true", help="same as --device cpu")
    g.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16, or fp16 with loss scaling)")
    g.add_argument("-j", "--workers", type=int, default=0,
                   help="data-loading processes per training process (in-memory CIFAR/MNIST data: unused)")
    g.add_argument("--output-dir", default="results", help="root of the results tree")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in the run folder")
    g.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue the interrupted run in the run folder (or from CHECKPOINT, a last.pth)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--tensorboard", action="store_true",
                   help="also log every epoch to <run folder>/tensorboard (needs the tensorboard package)")
    s = parser.add_argument_group("speed (results equal up to float rounding; may change on --resume)")
    s.add_argument("--no-tf32", action="store_true", help="CUDA: fp32 matmuls and convolutions without TF32 "
                                                           "(allowed by default; cudnn autotuning is always on)")
    s.add_argument("--channels-last", action="store_true", help="model and input batches in channels_last memory "
                                                                 "format (faster convolutions on tensor cores)")
    s.add_argument("--compile", action="store_true", help="torch.compile the model for training (the first steps "
                                                           "compile); tickets and last.pth stay plain state_dicts")
    s.add_argument("--no-fused-step", action="store_true", help="mask gradients in a pass of their own instead of "
                                                                 "inside the optimizer's update (same values)")
    add_sparse_args(parser)
    add_launcher_args(parser)
    return parser


def build_parser(script: str) -> OneLineArgumentParser:
    """The flags of main_<script>.py."""
    if script not in SCRIPTS:
        raise ValueError(script)
    parser = common_parser(f"main_{script}.py", _DESCRIPTIONS[script])
    parser.set_defaults(epochs=DEFAULT_EPOCHS[script])
    g = parser.add_argument_group("CIFAR / MNIST")
    g.add_argument("--model", default="", metavar="MODEL",
                   help="model (required): " + ", ".join(MODEL_NAMES))
    g.add_argument("--data", default="cifar10", help="cifar10 | cifar100 | fashionmnist | mnist")
    g.add_argument("--data-dir", default="./data", help="dataset root in torchvision's on-disk layout")
    g.add_argument("--test-batch-size", type=int, default=128, help="batch size of validation passes")
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"], help="optimizer (weight decay: --l2)")
    g.add_argument("--l2", type=float, default=5e-4, help="weight decay")
    g.add_argument("--valid_split", "--valid-split", dest="valid_split", type=float, default=0.1,
                   help="tail fraction of the training set used for model selection")
    g.add_argument("--nolrsche", "--nolr_scheduler", dest="nolrsche", action="store_true",
                   help="constant LR (no step schedule; main_EDST.py has its own schedule)")
    g.add_argument("--log-interval", type=int, default=100,
                   help="batches between running training-loss lines in train.log and on stdout (0: none)")
    g.add_argument("--save-every", type=int, default=0, help="also keep a snapshot every K epochs (for tsne)")
    if script == "EDST":
        g.add_argument("--epochs-explo", type=int, default=150, help="exploration epochs before the refinement phases")
        g.add_argument("--model-num", type=int, default=3, help="M: number of free tickets")
    if script == "PF":
        g.add_argument("--pretrained", "--pretrain", dest="pretrained", default=None,
                       help="dense checkpoint to prune (a ticket from main_individual.py, or a state_dict); with "
                            "--resume and no last.pth in the run folder yet, the run starts from it")
        g.add_argument("--epochs-fs", type=int, default=80, help=IGNORED)
        g.add_argument("--model-num", type=int, default=3, help=IGNORED)
    ign = parser.add_argument_group("accepted for compatibility " + IGNORED)
    add_ignored_flags(ign, NO_OP_VALUE_FLAGS, NO_OP_SWITCHES)
    return parser


_DESCRIPTIONS = {
    "individual": "Train one model (dense by default, sparse with --sparse); one seed = one deep-ensemble member.",
    "DST": "Train one dynamic-sparse network; M runs with different seeds form a DST ensemble.",
    "EDST": "EDST ensemble: one run = exploration + M refinement phases, each yielding a free ticket.",
    "PF": "PF ensemble member: prune a dense checkpoint globally, fine-tune with the mask fixed.",
}


def parser_defaults(parser: argparse.ArgumentParser) -> dict:
    """Every flag's default (a flag newer than a resume checkpoint counts as changed only off its default)."""
    return {a.dest: a.default for a in parser._actions if a.dest != "help" and a.default is not argparse.SUPPRESS}


def normalise_spellings(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Accept --sparse_init for --sparse-init (and the reverse): the paper's ImageNet line uses underscores.

    Where the parser has a hidden --resume-run (a positional data root follows the flags), also keeps
    ``--resume DATA_DIR`` meaning "resume, data in DATA_DIR": --resume takes the next token as its
    checkpoint only when that is a file or ends in .pth/.pt.
    """
    known = parser._option_string_actions  # every option string the parser accepts
    out = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + argv[i:]
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token.partition("=")
            if name not in known:
                for alt in ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
                    if alt in known:
                        name = alt
                        break
            token = name + eq + value
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            if name == "--resume" and "--resume-run" in known and not eq and nxt and not nxt.startswith("-") and not (
                    Path(nxt).is_file() or nxt.endswith((".pth", ".pt"))):
                token = "--resume-run"  # plain --resume; the next token stays the data root
        out.append(token)
    return out


# ---------------------------------------------------------------------------------- checks
def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _unit(flag: str, value: float) -> None:
    if not 0 <= value < 1:
        raise UsageError(f"--{flag} must be in [0, 1), got {value}")


def validate_common(args: argparse.Namespace) -> None:
    """Checks of the common flags (every training script)."""
    drop_launcher_flags(args)
    for name, value in vars(args).items():  # inf/nan pass the range checks below (or make them pass)
        if isinstance(value, float) and not math.isfinite(value):
            flag = name if name == "valid_split" else name.replace("_", "-")
            raise UsageError(f"--{flag} must be a finite number, got {value}")
    check_path("--output-dir", args.output_dir)
    if isinstance(args.resume, str):
        check_path("--resume", args.resume)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: --resume continues the run in the folder, "
                         "--overwrite replaces it; pass one of them")
    for name in ("epochs", "batch_size", "multiplier", "update_frequency"):
        _positive(name, getattr(args, name))
    if args.epochs * args.multiplier > MAX_TOTAL_EPOCHS:
        raise UsageError(f"--epochs {args.epochs} x --multiplier {args.multiplier} = {args.epochs * args.multiplier} "
                         f"epochs, more than {MAX_TOTAL_EPOCHS:,}; lower --epochs or --multiplier")
    if not 0 <= args.seed < 2 ** 63:  # what every RNG here takes (torch.manual_seed overflows beyond 64 bits)
        raise UsageError(f"--seed must be in [0, 2**63), got {args.seed}; pick a smaller seed")
    if args.erk_power_scale < 0:
        raise UsageError(f"--erk-power-scale must be 0 (uniform) or more, got {args.erk_power_scale}")
    if args.death_threshold < 0:
        raise UsageError(f"--death-threshold is a magnitude |w|: it must be 0 or more, got {args.death_threshold}")
    if args.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {args.workers}")
    if args.tensorboard:
        check_tensorboard()
    if not 0 < args.density <= 1:
        raise UsageError(f"--density must be in (0, 1], got {args.density}")
    for flag, dest in (("death-rate", "death_rate"), ("large-death-rate", "large_death_rate"),
                       ("final-death-rate", "final_death_rate"), ("PF-rate", "PF_rate")):
        _unit(flag, getattr(args, dest))
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    check_lr(args.lr)
    if args.momentum < 0:
        raise UsageError(f"--momentum must be non-negative, got {args.momentum}")
    if args.no_cuda:
        args.device = "cpu"


def validate(script: str, args: argparse.Namespace) -> None:
    """Range and consistency checks of main_<script>.py's flags; raises UsageError naming the flag and the fix.

    Resolves main_PF.py's pruning rate (see --PF-rate) in place.
    """
    from .data import SPECS

    given = given_flags(args)
    if not args.model:
        raise UsageError(f"--model is required; choose one of: {', '.join(MODEL_NAMES)}")
    if args.model not in MODEL_NAMES:
        raise UsageError(f"unknown model {args.model!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if args.data not in SPECS:
        raise UsageError(f"unknown dataset {args.data!r}; choose one of: {', '.join(SPECS)}")
    validate_common(args)
    _positive("test_batch_size", args.test_batch_size)
    _unit("valid_split", args.valid_split)
    if args.l2 < 0:
        raise UsageError(f"--l2 must be non-negative, got {args.l2}")
    if args.log_interval < 0:
        raise UsageError(f"--log-interval must be 0 (off) or a positive number of batches, got {args.log_interval}")
    if args.save_every < 0:
        raise UsageError(f"--save-every must be 0 (off) or a positive number of epochs, got {args.save_every}")
    if script == "EDST":
        _positive("model-num", args.model_num)
        if not 0 <= args.epochs_explo < args.epochs:
            raise UsageError(f"--epochs-explo ({args.epochs_explo}) must be in [0, --epochs ({args.epochs})); "
                             f"lower it or raise --epochs")
        if (args.epochs - args.epochs_explo) / args.model_num < 1:
            raise UsageError(f"each of the {args.model_num} refinement phases would last less than one epoch; "
                             f"raise --epochs or lower --model-num")
    if script in ("DST", "EDST") and not args.sparse:
        raise UsageError(f"main_{script}.py trains sparse networks: add --sparse (use main_individual.py for dense)")
    if script == "EDST" and args.fix:
        raise UsageError("main_EDST.py --fix would train M tickets from one mask, with no re-exploration between "
                         "them: drop --fix, or use main_DST.py --sparse --fix for a static sparse network")
    if script == "individual" and args.fix and not args.sparse:
        raise UsageError("--fix keeps a sparse mask fixed, but this run is dense: add --sparse for a static sparse "
                         "network, or drop --fix")
    if script == "PF":
        if not args.pretrained:
            raise UsageError("main_PF.py needs a dense checkpoint: pass --pretrained FILE (from main_individual.py)")
        if "PF_rate" not in given and "density" in given:
            args.PF_rate = 1.0 - args.density
    if script == "individual" and "density" in given and not args.sparse:
        # the paper's dense (PF pre-training) command passes --density: a note, not a refusal
        print(f"note: --density {args.density:g} applies to sparse runs and this run is dense: it trains a dense "
              f"model (add --sparse for a sparse one)")
    check_path("--data-dir", args.data_dir)
    check_path("--pretrained", getattr(args, "pretrained", None))
    spec = SPECS[args.data]
    check_run_numbers(args, lambda: get_model(args.model, num_classes=spec.num_classes, in_channels=spec.in_channels,
                                              image_size=spec.image_size),
                      (spec.in_channels, spec.image_size, spec.image_size),
                      f"{args.model} on {args.data} with --batch-size {args.batch_size}",
                      sparse=args.sparse and script != "PF")


def at_least(low: int):
    """An argparse type: an integer >= low (the error names the flag)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _epoch_list(text: str, flag: str) -> list[int]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise UsageError(f"--{flag} {text!r} is not a comma-separated list of epochs; pass one such as "
                         f"100,170,240") from None


def _lr_steps(text: str) -> list[tuple[int, float]]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    steps = []
    for item in text.split(","):
        try:
            e, f = item.split(":")
            steps.append((int(e), float(f)))
        except ValueError:
            raise UsageError(f"--lr-steps item {item!r} is not EPOCH:FACTOR; pass pairs such as "
                              f"30:0.1,60:0.01") from None
    return steps


def validate_imagenet(args: argparse.Namespace) -> str | None:
    """ImageNet/main.py: the common checks, then its schedule flags. Schedule flags not given become the
    paper's 310-epoch schedule scaled to --epochs (written into `args`); returns a note saying so, if any."""
    given = given_flags(args)
    validate_common(args)
    if args.fix and not args.sparse:
        raise UsageError("--fix keeps a sparse mask fixed, but --dense trains no mask: drop one of them")
    reexplore_given, steps_given = "reexplore_epochs" in given, "lr_steps" in given
    reexplore, steps, warmup = schedules.paper_imagenet_plan(args.epochs)
    derived = []
    if args.fix and reexplore_given and args.reexplore_epochs.strip():
        raise UsageError(f"--fix keeps the masks fixed, so --reexplore-epochs {args.reexplore_epochs} would re-explore "
                         f"nothing: drop --fix for EDST, or pass --reexplore-epochs '' for one static ticket")
    if not reexplore_given:
        args.reexplore_epochs = "" if args.fix else ",".join(map(str, reexplore))  # static masks: one ticket
        derived.append(f"--reexplore-epochs {args.reexplore_epochs or repr('')}")
    if not steps_given:
        args.lr_steps = ",".join(f"{e}:{f:g}" for e, f in steps)
        derived.append(f"--lr-steps {args.lr_steps}")
    if "warmup" not in given:
        args.warmup = warmup
        derived.append(f"--warmup {warmup}")
    reexplore = _epoch_list(args.reexplore_epochs, "reexplore-epochs")
    if any(b <= a for a, b in zip(reexplore, reexplore[1:])) or any(not 0 < r < args.epochs for r in reexplore):
        raise UsageError(f"--reexplore-epochs {args.reexplore_epochs} must be increasing epochs strictly between 0 and "
                         f"--epochs {args.epochs}; pass a schedule for your length, '' for one ticket, or leave it out "
                         f"for the paper's scaled to --epochs")
    steps = _lr_steps(args.lr_steps)
    if steps_given and (any(b[0] <= a[0] for a, b in zip(steps, steps[1:])) or any(e < 0 or not f > 0
                                                                                    for e, f in steps)):
        raise UsageError(f"--lr-steps {args.lr_steps}: epochs must increase from 0 and factors be positive")
    if args.warmup >= args.epochs:
        raise UsageError(f"--warmup {args.warmup} must be shorter than --epochs {args.epochs}; lower --warmup")
    check_run_numbers(args, lambda: get_model(f"imagenet-{args.arch}", num_classes=1000, in_channels=3,
                                              image_size=args.image_size), (3, args.image_size, args.image_size),
                      f"{args.arch} at --image-size {args.image_size} with --batch-size {args.batch_size}",
                      sparse=args.sparse)
    decode = None
    if args.decode == "gpu" and run_device(args.device) != "cuda":
        decode = "note: --decode gpu has no GPU here: the JPEGs are decoded on the CPU (the same images, no speed-up)"
    fixed = args.fix and not reexplore_given
    if not derived or (args.epochs == schedules.PAPER_IMAGENET_EPOCHS and not fixed):
        return decode
    scaled = f" scaled to --epochs {args.epochs}" if args.epochs != schedules.PAPER_IMAGENET_EPOCHS else ""
    paper = len(schedules.PAPER_IMAGENET_REEXPLORE)
    lost = "" if fixed or reexplore_given or len(reexplore) == paper else (
        f"\nwarning: only {len(reexplore)} of the paper's {paper} re-explorations fit in --epochs {args.epochs} (the "
        f"others fall on the same epoch, at 0 or at the end), so this run has {len(reexplore) + 1} tickets, not "
        f"{paper + 1}; pass more --epochs or your own --reexplore-epochs")
    plan = (f"note: the paper's {schedules.PAPER_IMAGENET_EPOCHS}-epoch schedule{scaled}"
            f"{', with --fix: one static ticket, no re-exploration' if fixed else ''}: "
            f"{'; '.join(derived)} (give these flags to choose another){lost}")
    return "\n".join(n for n in (decode, plan) if n)


def schedule_for(script: str, args: argparse.Namespace) -> Schedule:
    """The schedule of a script's flags (validated): the paper's, stretched by --multiplier.

    script: one of SCRIPTS, or "imagenet" (ImageNet/main.py; the death-rate schedule restarts every phase).
    """
    epochs = args.epochs * args.multiplier
    if script == "imagenet":
        m = args.multiplier
        return schedules.factor_schedule(epochs, args.lr, tuple(r * m for r in _epoch_list(args.reexplore_epochs, "")),
                                         tuple((e * m, f) for e, f in _lr_steps(args.lr_steps)), args.warmup * m)
    if script == "EDST":
        return schedules.edst_schedule(epochs, args.epochs_explo * args.multiplier, args.model_num, args.lr)
    return schedules.step_schedule(epochs, args.lr, constant=args.nolrsche)
