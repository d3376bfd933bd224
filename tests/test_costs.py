"""The one cost accounting (sparselearning/costs.py) as benchmarks/flops_table.py applies it, against hand counts.

The run-folder side (PF's pre-training read from its --pretrained run's summary.json, --compare's rows) is
tested in test_evaluation_compare.py, against the same hand-counted 4,968,000 FLOPs.
"""
from __future__ import annotations


import pytest

from helpers import load_benchmark
from sparselearning.core.flops import FlopsProfile


@pytest.fixture(scope="module")
def flops_table():
    return load_benchmark("flops_table")


def test_pf_ensemble_includes_each_members_pretraining(flops_table):
    """2 members x (4 dense epochs + 2 fine-tuning epochs at density 0.2 of w), 90 images, batch 30.

    Dense forward 2000 FLOPs per image, sparse 250 + 0.2 x 1750 = 600: by hand,
    2 x (3 x 2000 x 90 x 4 + 3 x 600 x 90 x 2) = 2 x (2,160,000 + 324,000) = 4,968,000.
    """
    profile = FlopsProfile(layers={"w": 1750}, other=250)
    total = flops_table.pf_ensemble_flops(profile, {"w": 0.2}, members=2, dense_epochs=4, finetune_epochs=2,
                                          num_train=90, batch_size=30)
    assert total == pytest.approx(4_968_000)
    # without the pre-training it would be the fine-tuning alone: 648,000
    assert flops_table.ensemble_flops(2, 3 * 600 * 90 * 2) == pytest.approx(648_000)


def test_gpu_hours_count_every_epoch_at_dense_cost(flops_table):
    """1000 epochs of 3.6e14 FLOPs = 360 PFLOPs; at 100 TFLOP/s: 3,600 s = 1.0 GPU-hour (sparse or not)."""
    row = {"setting": "s", "method": "DST ensemble", "M": 3, "density": 0.2, "run_epochs": 1000,
           "dense_epoch_flops": 3.6e14}
    text = flops_table.format_gpu_hours({"rows": [row]}, 100.0)
    assert "ESTIMATE" in text and "100 TFLOP/s" in text
    cells = text.splitlines()[-1].split()
    assert cells[-2:] == ["360.0", "1.0"]
    assert flops_table.format_gpu_hours({"rows": [row]}, 50.0).splitlines()[-1].split()[-1] == "2.0"
