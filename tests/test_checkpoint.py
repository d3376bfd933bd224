"""Mask bit packing of tickets: the byte layout is numpy.packbits' (big-endian bits), so tickets written by any
version, or by numpy, read back the same."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparselearning.checkpoint import pack_mask, unpack_mask


def test_first_element_is_the_high_bit():
    assert pack_mask(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)).tolist() == [128]
    assert pack_mask(torch.tensor([0, 0, 0, 0, 0, 0, 0, 1], dtype=torch.bool)).tolist() == [1]
    assert pack_mask(torch.tensor([1, 0, 1], dtype=torch.bool)).tolist() == [0b10100000]  # zero padded at the end


@pytest.mark.parametrize("shape", [(8,), (3, 5), (2, 3, 3, 3), (1,), (17, 9)])
def test_packing_equals_numpy_packbits(shape):
    g = torch.Generator().manual_seed(sum(shape))
    mask = torch.rand(shape, generator=g) < 0.3
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8
    assert packed.numpy().tolist() == np.packbits(mask.numpy().ravel()).tolist()
    assert torch.equal(unpack_mask(packed, shape), mask)


def test_unpacking_reads_numpy_bytes():
    bits = np.array([1, 1, 0, 0, 0, 0, 0, 1, 0, 1], dtype=bool)
    mask = unpack_mask(torch.from_numpy(np.packbits(bits)), (2, 5))
    assert mask.tolist() == bits.reshape(2, 5).tolist()
