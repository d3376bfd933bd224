"""No host sync on an ordinary training step: the real loader (shuffle, crop/flip augmentation, normalisation),
the model, the loss and Masking.step, counted by benchmarks/sync_counter.py's HostSyncCounter (every
synchronising call torch offers a Python hook for: Tensor.item/tolist/cpu/numpy/__bool__/__float__/__int__,
nonzero, boolean-mask indexing, torch.equal, .to(cpu), print/format of a tensor).

On the CPU nothing waits, so the counter counts the calls that would wait on a GPU. An epoch of N steps may
make only its end-of-epoch reads (the non-finite-loss check and the sums), whatever N is; a sync inserted
into the step is seen once per step.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from helpers import REPO, load_module
from models import get_model
from sparselearning.core.masking import Masking
from sparselearning.data import make_loaders
from sparselearning.loop import train_one_epoch


@pytest.fixture(scope="module")
def counter_class():
    return load_module(REPO / "benchmarks" / "sync_counter.py", "sync_counter").HostSyncCounter


def _epoch_syncs(counter_class, steps: int, insert=None) -> dict:
    """Syncs counted over one training epoch of `steps` batches (sparse model, no topology update in it)."""
    gen = torch.Generator().manual_seed(0)
    train, _, _, spec = make_loaders("fashionmnist", None, 32, 256, 0.1, torch.device("cpu"), gen)
    torch.manual_seed(0)
    model = get_model("cnn-small", num_classes=spec.num_classes, in_channels=spec.in_channels,
                      image_size=spec.image_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    masking = Masking(opt, update_frequency=10 ** 6, seed=0)
    masking.add_module(model, density=0.2)
    if insert is not None:
        plain_step = masking.step
        masking.step = lambda **kw: (insert(model), plain_step(**kw))[1]
    train_one_epoch(model, list(itertools.islice(iter(train), 1)), opt, masking, None, progress=False)  # warm-up
    batches = itertools.islice(iter(train), steps)  # drawn inside the counted window: the loader is counted too
    with counter_class() as syncs:
        train_one_epoch(model, batches, opt, masking, None, progress=False, total=steps, check_every=10 ** 6)
    return dict(syncs.counts)


@pytest.mark.slow
def test_an_epoch_makes_only_its_end_of_epoch_reads_whatever_its_length(counter_class):
    short, long = _epoch_syncs(counter_class, 2), _epoch_syncs(counter_class, 6)
    assert short == long  # nothing per step
    assert short == {"__int__": 1, "tolist": 1}  # the non-finite-loss flag and the epoch's sums, once


@pytest.mark.slow
@pytest.mark.parametrize("name,sync", [
    ("item", lambda m: next(m.parameters()).sum().item()),
    ("torch.nonzero", lambda m: torch.nonzero(next(m.parameters()))),
    ("__getitem__", lambda m: next(m.parameters())[next(m.parameters()) > 0]),
    ("torch.equal", lambda m: torch.equal(next(m.parameters()), next(m.parameters()))),
    ("__repr__", lambda m: repr(next(m.parameters()).sum())),
])
def test_a_sync_inserted_into_the_step_is_counted_every_step(counter_class, name, sync):
    baseline = _epoch_syncs(counter_class, 3)
    with_sync = _epoch_syncs(counter_class, 3, insert=sync)
    assert with_sync.get(name, 0) - baseline.get(name, 0) == 3
