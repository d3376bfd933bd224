"""Input sets for evaluation: the test split (or ImageNet's val split), OoD sets, corrupted test sets.

Each becomes a :class:`~sparselearning.evaluation.logits.Source` whose cache key follows its content
(a fingerprint of the images, the seed of generated ones, or a file's size and time).
"""
from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import UsageError
from .config import DEFAULT_OOD, EvalConfig
from .logits import Source, fingerprint
from .tickets import canonical_dataset

__all__ = ["TestSet", "load_test_set", "load_ood_sets", "CorruptionPlan", "plan_corruptions", "corruption_sources",
           "ood_source", "tsne_subset"]


@dataclass
class TestSet:
    spec: object  # the dataset's DatasetSpec
    source: Source  # the test split (labels in source.labels)
    images: torch.Tensor | None  # uint8 (N, C, H, W); None for ImageNet (streamed)

    @property
    def n(self) -> int:
        return self.source.n

    @property
    def labels(self) -> torch.Tensor:
        return self.source.labels


def load_test_set(dataset: str, first_ticket: dict, cfg: EvalConfig, first_name: str) -> TestSet:
    """The test split of ``dataset`` (ImageNet: the val split of --data-dir, streamed)."""
    from .. import data as D

    if dataset == "imagenet":
        return _imagenet_test_set(first_ticket, cfg)
    spec = D.get_spec(dataset)
    if int(first_ticket["num_classes"]) != spec.num_classes:
        raise UsageError(f"{first_name} has {first_ticket['num_classes']} classes but {dataset} has "
                         f"{spec.num_classes}; the ticket's dataset entry is wrong")
    images, labels = D.load_split(dataset, "test", cfg.data_dir, cfg.download)
    src = Source(key=f"test-{fingerprint(images, labels)}", n=int(labels.shape[0]), labels=labels,
                 make_images=lambda: images, desc=f"{dataset} test")
    return TestSet(spec=spec, source=src, images=images)


def _imagenet_test_set(t0: dict, cfg: EvalConfig) -> TestSet:
    from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD, image_folder, imagenet_spec

    if not cfg.data_dir:
        raise UsageError("--data imagenet needs --data-dir: the ImageNet root holding train/ and val/")
    size = int(t0["image_size"])
    val = image_folder(cfg.data_dir, "val", size, t0.get("class_names"))
    norm = t0.get("normalization") or {}
    spec = imagenet_spec(int(t0["num_classes"]), size, 0, norm.get("mean", IMAGENET_MEAN),
                         norm.get("std", IMAGENET_STD))
    labels = torch.tensor(val.targets, dtype=torch.int64)
    key = "test-" + hashlib.sha1("\n".join(p for p, _ in val.samples).encode()).hexdigest()[:12]

    def no_images() -> torch.Tensor:
        raise UsageError("ImageNet's val split is streamed; this mode is not available for ImageNet")

    src = Source(key=key, n=int(labels.shape[0]), labels=labels, make_images=no_images, desc="imagenet val",
                 imagenet_dir=cfg.data_dir)
    return TestSet(spec=spec, source=src, images=None)


# --------------------------------------------------------------------------- OoD
def _ood_no_download(key: str, like, n_test: int, cfg: EvalConfig, gen) -> torch.Tensor:
    from .. import data as D

    if key in ("gaussian", "uniform"):
        return D.ood_images(key, like, n_test, cfg.data_dir, gen)
    D.load_split(key, "test", cfg.data_dir, download=False)  # raises when missing
    return D.ood_images(key, like, None, cfg.data_dir, gen)


def load_ood_sets(dataset: str, test: TestSet, cfg: EvalConfig, out: Callable[[str], None]
                  ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``({name: uint8 images}, notes on skipped sets)``; a default set that cannot be loaded is skipped."""
    from .. import data as D

    explicit = cfg.ood_data is not None
    names = list(cfg.ood_data) if explicit else list(DEFAULT_OOD.get(dataset, ("gaussian", "uniform")))
    sets: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for name in names:
        key = str(name).lower()
        if canonical_dataset(key) == dataset:
            raise UsageError(f"--ood-data {name} is the in-distribution dataset; pick another set")
        gen = torch.Generator().manual_seed(int(cfg.seed) * 1009 + zlib.crc32(key.encode()))
        try:
            if cfg.download:
                imgs = D.ood_images(key, test.spec, None if key not in ("gaussian", "uniform") else test.n,
                                    cfg.data_dir, gen)
            else:
                imgs = _ood_no_download(key, test.spec, test.n, cfg, gen)
        except UsageError as err:
            if explicit or isinstance(err, D.DataFileError):  # a set that is there but wrong is never skipped
                raise
            notes.append(f"ood set {key} skipped: {err}")
            out(f"note: skipping OoD set {key} ({str(err)[:200]}); pass --ood-data to choose the sets")
            continue
        if imgs.shape[0] > test.n:  # a random, seeded subset the size of the ID test set
            idx = torch.randperm(imgs.shape[0], generator=gen)[: test.n].sort().values
            imgs = imgs[idx]
        sets[key] = imgs
    return sets, notes


def ood_source(name: str, imgs: torch.Tensor) -> Source:
    return Source(key=f"ood-{name}-n{imgs.shape[0]}-{fingerprint(imgs)}", n=int(imgs.shape[0]), labels=None,
                  make_images=lambda: imgs, desc=f"OoD {name}")


# --------------------------------------------------------------------------- corruptions
@dataclass
class CorruptionPlan:
    kind: str  # generated | standard | all | named
    names: list[str]


def _generated_names(chosen: list[str] | None) -> list[str]:
    from ..data.corruptions import CORRUPTIONS

    if chosen is None:
        return list(CORRUPTIONS)
    bad = [n for n in chosen if n not in CORRUPTIONS]
    if bad or not chosen:
        raise UsageError(f"--corruptions: unknown corruption(s) {', '.join(bad) or '(none)'}; use "
                         f"generated, standard, all or names from: {', '.join(CORRUPTIONS)}")
    return list(dict.fromkeys(chosen))


def plan_corruptions(cfg: EvalConfig, dataset: str) -> CorruptionPlan:
    """Which corruptions to evaluate: generated on the fly, or the CIFAR-C files of --cf_c_path."""
    from .. import data as D

    kind = str(cfg.corruptions).strip() if cfg.corruptions else ("all" if cfg.cf_c_path else "generated")
    chosen: list[str] | None = None
    if kind not in ("generated", "standard", "all"):
        chosen = [t.strip() for t in kind.split(",") if t.strip()]
        kind = "named" if cfg.cf_c_path else "generated"
    if kind == "generated":
        return CorruptionPlan("generated", _generated_names(chosen))
    if not cfg.cf_c_path:
        raise UsageError(f"--corruptions {kind} reads the released CIFAR-10-C/100-C files; pass --cf_c_path "
                         f"DIR (or use --corruptions generated)")
    if dataset not in ("cifar10", "cifar100"):
        raise UsageError(f"--cf_c_path holds CIFAR-C images but the tickets are {dataset} models; use "
                         f"--corruptions generated")
    present = D.list_cifar_c(cfg.cf_c_path)
    if kind == "standard":
        names = [n for n in D.CIFAR_C_STANDARD if n in present]
    elif kind == "named":
        bad = [n for n in chosen or [] if n not in present]
        if bad or not chosen:
            raise UsageError(f"--corruptions: {', '.join(bad) or '(none)'} not found in {cfg.cf_c_path}; "
                             f"present: {', '.join(present) or 'none'}")
        names = list(dict.fromkeys(chosen))
    else:
        names = list(present)
    if not names:
        raise UsageError(f"no {'standard ' if kind == 'standard' else ''}corruption .npy files in "
                         f"{cfg.cf_c_path}; download CIFAR-10-C/100-C there")
    if not (Path(cfg.cf_c_path) / "labels.npy").is_file():
        raise UsageError(f"{Path(cfg.cf_c_path) / 'labels.npy'} is missing; CIFAR-C folders hold labels.npy")
    for name in names:  # uint8 images, integer labels in range: checked before anything is computed or written
        D.check_cifar_c(cfg.cf_c_path, name, D.get_spec(dataset).num_classes)
    return CorruptionPlan(kind, names)


def corruption_sources(plan: CorruptionPlan, cfg: EvalConfig, test: TestSet
                       ) -> list[tuple[str, Source, int | torch.Tensor]]:
    """(corruption name, source, its severity or a severity per image) for every input set of ``plan``."""
    from .. import data as D

    out = []
    if plan.kind == "generated":
        from ..data.corruptions import corrupt

        for name in plan.names:
            ci = zlib.crc32(name.encode())
            for sev in range(1, 6):
                def make(name=name, sev=sev, ci=ci):
                    gen = torch.Generator().manual_seed(int(cfg.seed) * 1000003 + ci * 10 + sev)
                    return corrupt(test.images, name, sev, gen)

                src = Source(key=f"gen-{name}-s{sev}-seed{cfg.seed}-{test.source.key}", n=test.n,
                             labels=test.labels, make_images=make, desc=f"{name} severity {sev}")
                out.append((name, src, sev))
        return out
    folder = Path(cfg.cf_c_path)
    for name in plan.names:
        f = folder / f"{name}.npy"
        st = f.stat()
        num_classes = test.spec.num_classes
        _, labels, severity = D.load_cifar_c(cfg.cf_c_path, name, num_classes)  # images loaded again lazily
        sig = hashlib.sha1(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]

        def make(name=name):
            return D.load_cifar_c(cfg.cf_c_path, name, num_classes)[0]

        src = Source(key=f"cifarC-{name}-{sig}", n=int(labels.shape[0]), labels=labels, make_images=make,
                     desc=f"CIFAR-C {name}")
        out.append((name, src, severity))
    return out


def tsne_subset(test: TestSet, samples: int, seed: int) -> tuple[torch.Tensor, Source]:
    """A fixed, seeded subset of the test images (indices, source) for the t-SNE of snapshots."""
    n = min(samples, test.n)
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(test.n, generator=gen)[:n].sort().values
    src = Source(key=f"tsne-n{n}-seed{seed}-{test.source.key}", n=n, labels=test.labels[idx],
                 make_images=lambda: test.images[idx].contiguous(), desc=f"t-SNE subset ({n} images)")
    return idx, src
