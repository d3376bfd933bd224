"""Fixtures only; the shared helpers are the tests/helpers package (imported by the tests directly)."""
import pytest
import torch

from helpers import wrn_shapes, write_fashion_mnist


@pytest.fixture
def wrn28_10_shapes():
    return wrn_shapes()


@pytest.fixture(scope="module")
def single_torch_thread():
    """For modules of many tiny tensor ops: on a small, busy machine torch's intra-op threads only add
    contention (10x slower), so such modules run on one thread (restored afterwards). Use with
    ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def fmnist_dir(tmp_path):
    return write_fashion_mnist(tmp_path / "data")
