"""--compile compiles once per run: the partial last batch of an epoch does not add a shape-specialised graph.

Counted with a backend that records every graph dynamo hands it (the eager backend's work, on the CPU).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sparselearning.loop import compiled_for_training, train_one_epoch


def _epochs(wrapper, epochs=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    net = wrapper(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    sizes = [8, 8, 8, 5]  # the last batch of every epoch is partial
    data = [(torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)) for n in sizes]
    for _ in range(epochs):
        train_one_epoch(net, data, opt, None, None, progress=False)
    return model


@pytest.mark.slow
def test_compile_happens_once_for_all_batch_sizes_and_epochs():
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled_model = _epochs(compiled_for_training(backend=counting_backend))
    assert len(graphs) == 1
    plain_model = _epochs(lambda m: m)  # and it trains as the uncompiled model does
    for a, b in zip(compiled_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_plain_torch_compile_would_compile_again_for_the_partial_batch():
    """The reference: without the dynamic batch dimension dynamo compiles a second graph (what the test above
    guards against)."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    _epochs(lambda m: torch.compile(m, backend=counting_backend), epochs=2)
    assert len(graphs) == 2
