import math

import pytest
import torch


def wrn_shapes(widen: int = 10, blocks: int = 4, classes: int = 10) -> dict[str, tuple]:
    """Conv/Linear weight shapes of a WRN-(6*blocks+4)-widen, written out independently of models/."""
    shapes = {"conv1.weight": (16, 3, 3, 3)}
    chans = [16, 16 * widen, 32 * widen, 64 * widen]
    for b in range(3):
        cin, cout = chans[b], chans[b + 1]
        for i in range(blocks):
            shapes[f"block{b + 1}.layer.{i}.conv1.weight"] = (cout, cin if i == 0 else cout, 3, 3)
            shapes[f"block{b + 1}.layer.{i}.conv2.weight"] = (cout, cout, 3, 3)
            if i == 0:
                shapes[f"block{b + 1}.layer.0.convShortcut.weight"] = (cout, cin, 1, 1)
    shapes["fc.weight"] = (classes, 64 * widen)
    return shapes


@pytest.fixture
def wrn28_10_shapes():
    return wrn_shapes()


def numel(shape):
    return math.prod(shape)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
