"""``python -m sparselearning.flops_cli --model wrn-28-10 --data cifar10 --density 0.2``: a model's per-layer
forward FLOPs, dense and at a sparse density (sparselearning.core.flops's accounting, the engine's own)."""
from __future__ import annotations

from models import ModelArgumentError, get_model

from .core.density import allocate_densities
from .core.flops import format_table, profile_model
from .core.masking import sparse_layer_names
from .data import get_spec
from .errors import OneLineArgumentParser, UsageError, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = OneLineArgumentParser(prog="python -m sparselearning.flops_cli",
                                   description="Per-layer forward FLOPs of a model, dense and at a sparse density.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--sparse-init", default="ERK", choices=["ERK", "ER", "uniform"])
    parser.add_argument("--erk-power-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    if not 0 < args.density <= 1:
        raise UsageError(f"--density must be in (0, 1], got {args.density}")
    spec = get_spec(args.data)
    try:
        model = get_model(args.model, num_classes=spec.num_classes, in_channels=spec.in_channels,
                          image_size=spec.image_size)
    except ModelArgumentError as err:
        raise UsageError(str(err)) from None
    names = sparse_layer_names(model)
    params = dict(model.named_parameters())
    shapes = {n: tuple(params[n].shape) for n in names}
    densities = allocate_densities(args.sparse_init, shapes, args.density, args.erk_power_scale)
    profile = profile_model(model, (spec.in_channels, spec.image_size, spec.image_size), names)
    print(format_table(profile, densities, shapes))
    n_sparse = sum(round(densities[n] * params[n].numel()) for n in names)
    n_all = sum(p.numel() for p in params.values())
    print(f"parameters: dense {n_all:,}; sparse layers {sum(params[n].numel() for n in names):,}, "
          f"active at density {args.density}: {n_sparse:,} (+{n_all - sum(params[n].numel() for n in names):,} dense)")


if __name__ == "__main__":
    run_cli(main, prog="python -m sparselearning.flops_cli", on_stop="nothing was written")
