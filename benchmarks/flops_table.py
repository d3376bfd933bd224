"""Training FLOPs and parameter counts of the paper's configurations, by the project's FLOPs accounting.

Every figure comes from ``sparselearning.core.flops``, the accounting the training engine itself uses:
per-layer dense forward FLOPs measured once (``profile_model``, one batch-1 forward), a sparse
layer costing its density times its dense FLOPs, ``step_flops`` per optimizer step (3x forward,
or 2x sparse + 1x dense forward at a topology update with gradient growth), and EDST's
re-explorations charged as the engine charges them (one dense forward of the epoch's last batch).
The yardstick is ``dense_training_flops``: one dense model trained 250 epochs.

Settings (the paper's):

- CIFAR: WRN-28-10, 45,000 training images (50k minus the 10% validation tail), batch 128
  (352 steps per epoch, the last one of 72 images), ERK densities, dT = 1000 steps, gradient
  growth; DST 250 epochs per member; EDST 150 + M x 100 epochs (M=3: 450, M=7: 850).
- Ensembles are summed by ``sparselearning.costs.ensemble_training_flops``, the function
  ``ensemble_freetickets.py --compare`` and ``reproduce_small.py`` use on real runs.
- PF (assumption, the paper gives no figure): each of the M members is one dense 250-epoch model
  (counted in full, as its pre-training) plus a fine-tuning of ``--pf-finetune-epochs`` (default 250, the README's
  ``--epochs 250``) with a fixed mask. The fine-tuning mask's per-layer densities are those of
  global magnitude pruning (``global_magnitude_masks``, as ``main_PF.py``) applied to the freshly
  initialised network, a proxy for the trained one (whose layer-wise split is unknown here);
  the dense pre-training dominates the PF cost whatever that split is.
- ImageNet: torchvision ResNet-50 at 224 px, 1,281,167 images, global batch 128 (2 GPUs x 64),
  ERK at density 0.2, dT = 4000, 310 epochs with 3 re-explorations (4 tickets); the dense deep
  ensemble has 4 members trained ``--imagenet-dense-epochs`` epochs each (default 310, the same
  schedule length; state another with the flag).

Runs in a few seconds on the CPU:

    python benchmarks/flops_table.py [--gpu-tflops 100] [--json out.json]

It also prints the expected GPU-hours of each configuration at an assumed sustained throughput
(``--gpu-tflops``): an estimate until measured.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Mapping

import torch
from torch import nn

from sparselearning.costs import RunCost, ensemble_training_flops
from sparselearning.core.density import allocate_densities, count_for_density, global_magnitude_masks
from sparselearning.core.flops import DENSE_REFERENCE_EPOCHS, FlopsProfile, dense_training_flops, profile_model, step_flops

CIFAR_TRAIN = 45_000
CIFAR_BATCH = 128
CIFAR_DT = 1000
IMAGENET_TRAIN = 1_281_167
IMAGENET_BATCH = 128  # 2 processes x 64
IMAGENET_DT = 4000

# The paper's training-FLOPs multipliers (its Table 1 and the ImageNet section)
PAPER = {("EDST", 3, 0.2): "0.61", ("EDST", 7, 0.1): "0.57", ("DST", 3, 0.2): "1.02"}


# ----------------------------------------------------------------------------- accounting
def run_training_flops(profile: FlopsProfile, densities: Mapping[str, float], *, epochs: int, num_train: int,
                       batch_size: int, update_frequency: int | None, dense_grad: bool = True,
                       reexplorations: int = 0) -> float:
    """FLOPs of one training run, step by step as ``sparselearning.train`` accounts them.

    Every epoch has ceil(num_train / batch_size) steps, the last one partial. The masking step
    counter runs across epochs; step k (1-based) is a topology update when k % update_frequency
    == 0 (None: fixed mask or dense, no updates), and costs the dense-gradient step then when
    ``dense_grad`` (gradient growth). Each EDST re-exploration adds one dense forward of the last
    batch of its epoch (the engine's charge for the dense gradient it computes).
    """
    spe = math.ceil(num_train / batch_size)
    last = num_train - (spe - 1) * batch_size
    total_steps = spe * epochs
    plain = epochs * ((spe - 1) * step_flops(profile, densities, batch_size) + step_flops(profile, densities, last))
    extra = 0.0
    if update_frequency and dense_grad:
        n_updates = total_steps // update_frequency
        # how many update steps fall on an epoch's last (partial) batch
        n_last = sum(1 for k in range(1, n_updates + 1) if (k * update_frequency) % spe == 0)
        for size, count in ((batch_size, n_updates - n_last), (last, n_last)):
            extra += count * (step_flops(profile, densities, size, dense_grad=True) - step_flops(profile, densities, size))
    extra += reexplorations * profile.dense * last
    return plain + extra


def ensemble_flops(members: int, run_flops: float, pretraining_flops: float = 0.0) -> float:
    """An ensemble of ``members`` identical runs (each from its own pre-trained model, if any), by the one accounting."""
    return ensemble_training_flops([RunCost(run_flops, pretraining_flops)] * members)


def pf_ensemble_flops(profile: FlopsProfile, densities: Mapping[str, float], *, members: int, dense_epochs: int,
                      finetune_epochs: int, num_train: int, batch_size: int) -> float:
    """PF: each member a dense run of ``dense_epochs`` (its pre-training) plus a fixed-mask fine-tuning."""
    dense = run_training_flops(profile, {}, epochs=dense_epochs, num_train=num_train, batch_size=batch_size,
                               update_frequency=None)
    ft = run_training_flops(profile, densities, epochs=finetune_epochs, num_train=num_train, batch_size=batch_size,
                            update_frequency=None)
    return ensemble_flops(members, ft, pretraining_flops=dense)


@dataclass
class Network:
    name: str
    profile: FlopsProfile
    shapes: dict[str, tuple[int, ...]]
    n_params: int  # all parameters (BN and biases included)

    @property
    def n_sparse_layers(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def active_params(self, densities: Mapping[str, float]) -> int:
        """Non-zero parameters of one network with these per-layer densities (others dense)."""
        kept = sum(count_for_density(math.prod(s), densities.get(n, 1.0)) for n, s in self.shapes.items())
        return self.n_params - self.n_sparse_layers + kept

    def erk(self, density: float) -> dict[str, float]:
        return allocate_densities("ERK", self.shapes, density)


def build_network(name: str, model: nn.Module, input_shape: tuple[int, int, int], seed: int = 0) -> tuple[Network, nn.Module]:
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    params = dict(model.named_parameters())
    shapes = {n: tuple(params[n].shape) for n in names}
    profile = profile_model(model, input_shape, names)
    return Network(name, profile, shapes, sum(p.numel() for p in params.values())), model


def pf_densities(model: nn.Module, shapes: Mapping[str, tuple], density: float) -> dict[str, float]:
    """Per-layer densities of global magnitude pruning of `model`'s current weights (as main_PF.py)."""
    params = dict(model.named_parameters())
    masks = global_magnitude_masks({n: params[n].detach() for n in shapes}, density)
    return {n: float(m.float().mean()) for n, m in masks.items()}


# ----------------------------------------------------------------------------- rows
@dataclass
class Row:
    setting: str
    method: str
    M: int
    density: float
    epochs: str
    flops: float  # absolute training FLOPs of the whole ensemble
    relative: float  # relative to one dense model trained 250 epochs
    params: int  # non-zero parameters of the whole ensemble
    params_relative: float  # relative to one dense model
    paper: str = "-"
    note: str = ""
    dense_epoch_flops: float = 0.0  # one epoch of the dense model (what a GPU executes per epoch, masked or not)
    run_epochs: int = 0  # epochs of all the ensemble's runs together (pre-training included)


def cifar_rows(net: Network, model: nn.Module, dataset: str, pf_finetune_epochs: int) -> list[Row]:
    ref = dense_training_flops(net.profile, CIFAR_TRAIN, DENSE_REFERENCE_EPOCHS)
    dense_run = run_training_flops(net.profile, {}, epochs=250, num_train=CIFAR_TRAIN, batch_size=CIFAR_BATCH,
                                   update_frequency=None)
    rows = []

    def add(method, M, density, epochs, run_epochs, flops, params, note=""):
        rows.append(Row(f"WRN-28-10 / {dataset}", method, M, density, epochs, flops, flops / ref, params,
                        params / net.n_params, PAPER.get((method.split()[0], M, density), "-"), note,
                        dense_run / 250, run_epochs))

    add("dense (single)", 1, 1.0, "250", 250, dense_run, net.n_params)
    add("dense deep ensemble", 4, 1.0, "4 x 250", 4 * 250, ensemble_flops(4, dense_run), 4 * net.n_params)
    for density in (0.2, 0.1):
        erk = net.erk(density)
        per_ticket = net.active_params(erk)
        dst = run_training_flops(net.profile, erk, epochs=250, num_train=CIFAR_TRAIN, batch_size=CIFAR_BATCH,
                                 update_frequency=CIFAR_DT)
        add("DST ensemble", 3, density, "3 x 250", 3 * 250, ensemble_flops(3, dst), 3 * per_ticket)
        for M in ((3, 7) if density == 0.1 else (3,)):
            epochs = 150 + 100 * M
            edst = run_training_flops(net.profile, erk, epochs=epochs, num_train=CIFAR_TRAIN, batch_size=CIFAR_BATCH,
                                      update_frequency=CIFAR_DT, reexplorations=M - 1)
            add("EDST ensemble", M, density, f"150 + {M} x 100 = {epochs}", epochs, ensemble_flops(1, edst),
                M * per_ticket)
        pf_d = pf_densities(model, net.shapes, density)
        ft = run_training_flops(net.profile, pf_d, epochs=pf_finetune_epochs, num_train=CIFAR_TRAIN,
                                batch_size=CIFAR_BATCH, update_frequency=None)
        pf = pf_ensemble_flops(net.profile, pf_d, members=3, dense_epochs=250, finetune_epochs=pf_finetune_epochs,
                               num_train=CIFAR_TRAIN, batch_size=CIFAR_BATCH)
        add("PF ensemble", 3, density, f"3 x (250 dense + {pf_finetune_epochs} fine-tune)",
            3 * (250 + pf_finetune_epochs), pf,
            3 * net.active_params(pf_d),
            note=f"fine-tune alone {ft / ref:.3f}x per member (sparse fwd {net.profile.sparse(pf_d) / net.profile.dense:.3f})")
    return rows


def imagenet_rows(net: Network, dense_epochs: int) -> list[Row]:
    ref = dense_training_flops(net.profile, IMAGENET_TRAIN, DENSE_REFERENCE_EPOCHS)
    dense_run = run_training_flops(net.profile, {}, epochs=dense_epochs, num_train=IMAGENET_TRAIN,
                                   batch_size=IMAGENET_BATCH, update_frequency=None)
    erk = net.erk(0.2)
    edst = run_training_flops(net.profile, erk, epochs=310, num_train=IMAGENET_TRAIN, batch_size=IMAGENET_BATCH,
                              update_frequency=IMAGENET_DT, reexplorations=3)
    s, per_epoch = "ResNet-50 / ImageNet", dense_run / dense_epochs
    deep = ensemble_flops(4, dense_run)
    return [
        Row(s, "dense (single)", 1, 1.0, str(dense_epochs), dense_run, dense_run / ref, net.n_params, 1.0,
            dense_epoch_flops=per_epoch, run_epochs=dense_epochs),
        Row(s, "dense deep ensemble", 4, 1.0, f"4 x {dense_epochs}", deep, deep / ref, 4 * net.n_params, 4.0,
            dense_epoch_flops=per_epoch, run_epochs=4 * dense_epochs),
        Row(s, "EDST ensemble", 4, 0.2, "310 (100 + 3 x 70)", ensemble_flops(1, edst), ensemble_flops(1, edst) / ref,
            4 * net.active_params(erk), 4 * net.active_params(erk) / net.n_params, "~1/5 of the deep ensemble",
            note=f"= {edst / deep:.3f} of the dense deep ensemble (M=4 x {dense_epochs} epochs)",
            dense_epoch_flops=per_epoch, run_epochs=310),
    ]


def build_imagenet_resnet50() -> nn.Module:
    try:
        from models import get_model

        return get_model("imagenet-resnet50", num_classes=1000, in_channels=3, image_size=224)
    except Exception:  # registry without the ImageNet entry: build torchvision's directly
        import torchvision

        return torchvision.models.resnet50(weights=None, num_classes=1000)


def compute(pf_finetune_epochs: int = 250, imagenet_dense_epochs: int = 310, imagenet: bool = True) -> dict:
    from models import get_model

    torch.manual_seed(0)
    rows: list[Row] = []
    checks = []
    for dataset, classes in (("cifar10", 10), ("cifar100", 100)):
        net, model = build_network(f"wrn-28-10/{dataset}", get_model("wrn-28-10", num_classes=classes), (3, 32, 32))
        for d in (0.2, 0.1):
            checks.append({"setting": f"WRN-28-10 / {dataset}", "density": d,
                           "sparse_over_dense_forward": net.profile.sparse(net.erk(d)) / net.profile.dense})
        rows += cifar_rows(net, model, dataset, pf_finetune_epochs)
        if dataset == "cifar10":
            dense_gmacs = net.profile.dense / 2e9
        del model
    if imagenet:
        net, model = build_network("resnet50/imagenet", build_imagenet_resnet50(), (3, 224, 224))
        checks.append({"setting": "ResNet-50 / ImageNet", "density": 0.2,
                       "sparse_over_dense_forward": net.profile.sparse(net.erk(0.2)) / net.profile.dense})
        rows += imagenet_rows(net, imagenet_dense_epochs)
    return {"rows": [asdict(r) for r in rows], "forward_ratio_checks": checks, "wrn28_10_dense_gmacs": dense_gmacs,
            "assumptions": {"cifar_train": CIFAR_TRAIN, "cifar_batch": CIFAR_BATCH, "cifar_update_frequency": CIFAR_DT,
                            "imagenet_train": IMAGENET_TRAIN, "imagenet_global_batch": IMAGENET_BATCH,
                            "imagenet_update_frequency": IMAGENET_DT, "growth": "gradient",
                            "pf_finetune_epochs": pf_finetune_epochs, "imagenet_dense_epochs": imagenet_dense_epochs,
                            "yardstick": f"one dense model of the same setting trained {DENSE_REFERENCE_EPOCHS} epochs"}}


def format_table(result: dict) -> str:
    lines = []
    header = (f"{'setting':22s} {'method':20s} {'M':>2s} {'dens.':>5s} {'epochs':34s} {'train FLOPs':>11s} "
              f"{'paper':>7s} {'params':>12s} {'params/dense':>12s}")
    lines.append(header)
    lines.append("-" * len(header))
    last = None
    for r in result["rows"]:
        if last is not None and r["setting"] != last:
            lines.append("")
        last = r["setting"]
        paper = r["paper"] if len(r["paper"]) <= 7 else "*"
        lines.append(f"{r['setting']:22s} {r['method']:20s} {r['M']:2d} {r['density']:5.2f} {r['epochs']:34s} "
                     f"{r['relative']:10.3f}x {paper:>7s} {r['params']:12,d} {r['params_relative']:11.3f}x")
        if r["note"]:
            lines.append(f"{'':22s}   note: {r['note']}")
    lines.append("")
    lines.append("train FLOPs: whole ensemble, relative to ONE dense model of the same setting trained 250 epochs "
                 "(3x forward per step, 2x sparse + 1x dense forward at each gradient-growth update).")
    lines.append("paper: the paper's multiplier; '*' = ImageNet claim 'about 1/5 of the dense "
                 "deep ensemble's FLOPs' (see the note under that row).")
    lines.append(f"WRN-28-10 dense forward: {result['wrn28_10_dense_gmacs']:.3f} GMACs per 32x32 image "
                 f"(RigL's count for WRN-28-10: about 5.243).")
    ref = {("cifar10", 0.2): 0.340, ("cifar100", 0.2): 0.337, ("cifar10", 0.1): 0.169, ("cifar100", 0.1): 0.166}
    for c in result["forward_ratio_checks"]:
        key = (c["setting"].split(" / ")[1], c["density"])
        exp = f" (expected {ref[key]:.3f})" if key in ref else ""
        lines.append(f"ERK sparse/dense forward FLOPs, {c['setting']} at density {c['density']}: "
                     f"{c['sparse_over_dense_forward']:.3f}{exp}")
    a = result["assumptions"]
    lines.append(f"PF assumption: 250 dense epochs + {a['pf_finetune_epochs']} fine-tuning epochs per member, "
                 f"fine-tuning mask = global magnitude pruning of the initialised network (proxy).")
    return "\n".join(lines)


def format_gpu_hours(result: dict, tflops: float) -> str:
    """Expected GPU-hours of each configuration at a sustained training throughput of ``tflops`` TFLOP/s.

    Masks do not make a GPU's dense kernels cheaper: a sparse run executes the dense model's FLOPs each
    epoch, whatever its FLOPs accounting says. So the time is (epochs of all runs) x (one dense epoch).
    """
    lines = [f"Expected GPU time: an ESTIMATE until measured, at an assumed {tflops:g} TFLOP/s sustained "
             f"(replace it with your GPU's measured throughput; hours scale as 1 / throughput).",
             f"{'setting':22s} {'method':20s} {'M':>2s} {'dens.':>5s} {'epochs (all runs)':>17s} "
             f"{'executed PFLOPs':>15s} {'GPU-hours':>10s}"]
    for r in result["rows"]:
        executed = r["run_epochs"] * r["dense_epoch_flops"]
        lines.append(f"{r['setting']:22s} {r['method']:20s} {r['M']:2d} {r['density']:5.2f} {r['run_epochs']:17d} "
                     f"{executed / 1e15:15.1f} {executed / (tflops * 1e12) / 3600:10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pf-finetune-epochs", type=int, default=250,
                        help="fine-tuning epochs of each PF member after its 250 dense epochs (assumption)")
    parser.add_argument("--imagenet-dense-epochs", type=int, default=310,
                        help="epochs of each dense ResNet-50 of the ImageNet deep ensemble (assumption)")
    parser.add_argument("--no-imagenet", action="store_true", help="skip the ResNet-50 rows")
    parser.add_argument("--gpu-tflops", type=float, default=100.0,
                        help="assumed sustained training throughput of one GPU in TFLOP/s, for the GPU-hours estimate")
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    if args.pf_finetune_epochs < 0 or args.imagenet_dense_epochs < 1 or not args.gpu_tflops > 0:
        parser.error("--pf-finetune-epochs must be >= 0, --imagenet-dense-epochs >= 1 and --gpu-tflops > 0")
    start = time.time()
    result = compute(args.pf_finetune_epochs, args.imagenet_dense_epochs, not args.no_imagenet)
    print(format_table(result))
    print()
    print(format_gpu_hours(result, args.gpu_tflops))
    print(f"({time.time() - start:.1f} s, torch {torch.__version__})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
