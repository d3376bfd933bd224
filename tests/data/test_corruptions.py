"""Offline image corruptions: shapes, dtypes, monotone severity, determinism."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparselearning.data import corruptions as C
from sparselearning.errors import UsageError

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur", "fog",
          "elastic_transform"}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _natural_like(n: int, c: int, s: int, seed: int) -> torch.Tensor:
    """Images with smooth shading plus sharp-edged objects, loosely like real photos / clothes."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, c, 4, 4), generator=g)
    img = F.interpolate(low, size=(s, s), mode="bicubic", align_corners=True) * 0.5 + 0.1
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    for _ in range(3):
        cy, cx, r = (torch.randint(4, s - 4, (n, 1, 1, 1), generator=g) for _ in range(3))
        level = torch.rand((n, c, 1, 1), generator=g)
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2) < (r.float() / 2 + 2) ** 2
        img = torch.where(inside, level, img)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


IMAGE_SETS = {"gray28": _natural_like(16, 1, 28, 0), "rgb32": _natural_like(16, 3, 32, 1)}


def test_names():
    assert len(C.CORRUPTIONS) >= 10 and len(set(C.CORRUPTIONS)) == len(C.CORRUPTIONS)
    for need in ("gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "motion_blur", "contrast",
                 "brightness", "pixelate", "jpeg_compression", "elastic_transform", "fog"):
        assert need in C.CORRUPTIONS
    assert all(len(C.SEVERITY_PARAMS[name]) == 5 for name in C.CORRUPTIONS)


@pytest.mark.parametrize("kind", sorted(IMAGE_SETS))
@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_shape_dtype_monotone_deterministic(name, kind):
    x = IMAGE_SETS[kind]
    dist = []
    for severity in range(1, 6):
        out = C.corrupt(x, name, severity, torch.Generator().manual_seed(42))
        assert out.dtype == torch.uint8 and out.shape == x.shape
        dist.append((out.float() - x.float()).abs().mean().item())
        if severity == 3:
            again = C.corrupt(x, name, severity, torch.Generator().manual_seed(42))
            assert torch.equal(out, again)
            other = C.corrupt(x, name, severity, torch.Generator().manual_seed(43))
            assert torch.equal(out, other) != (name in RANDOM)
    assert dist[0] > 0
    assert all(a < b for a, b in zip(dist, dist[1:])), (name, kind, dist)


def test_generator_state_advances_only_for_random_corruptions():
    x = IMAGE_SETS["gray28"]
    for name in C.CORRUPTIONS:
        g = torch.Generator().manual_seed(0)
        before = g.get_state()
        C.corrupt(x, name, 2, g)
        assert torch.equal(g.get_state(), before) != (name in RANDOM), name


def test_empty_batch_and_bad_input():
    empty = torch.zeros((0, 1, 28, 28), dtype=torch.uint8)
    assert C.corrupt(empty, "fog", 3, torch.Generator()).shape == (0, 1, 28, 28)
    x = IMAGE_SETS["gray28"]
    with pytest.raises(UsageError):
        C.corrupt(x, "snow", 1, None)
    for bad in (0, 6, 2.0, True):
        with pytest.raises(UsageError):
            C.corrupt(x, "contrast", bad, None)
    with pytest.raises(UsageError):
        C.corrupt(x.float(), "contrast", 1, None)
    with pytest.raises(UsageError):
        C.corrupt(torch.zeros((1, 2, 8, 8), dtype=torch.uint8), "contrast", 1, None)


def test_jpeg_like_is_near_identity_at_high_quality():
    """The DCT is orthonormal, so at quality 100 (all-ones tables) only coefficient rounding remains."""
    d = C._dct_matrix()
    assert torch.allclose(d @ d.T, torch.eye(8), atol=1e-6)
    for x in (IMAGE_SETS["rgb32"].float(), IMAGE_SETS["gray28"].float()):
        err = C._jpeg_like(x, 100) - x
        assert err.pow(2).mean().sqrt().item() < 0.5 and err.abs().max().item() < 4
    # Lower quality = coarser tables = larger error.
    x = IMAGE_SETS["gray28"].float()
    errs = [(C._jpeg_like(x, q) - x).abs().mean().item() for q in (90, 60, 30, 10)]
    assert errs == sorted(errs)


def test_zoom_matrix_matches_grid_sample():
    x = IMAGE_SETS["rgb32"].float()
    for z in (1.0, 1.07, 1.26):
        theta = torch.tensor([[1 / z, 0.0, 0.0], [0.0, 1 / z, 0.0]]).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        got = C._zoom_matrix(32, z, "cpu") @ x @ C._zoom_matrix(32, z, "cpu").T
        assert torch.allclose(got, ref, atol=1e-3)


def test_brightness_keeps_hue_and_gray_is_additive():
    gray = torch.full((1, 1, 4, 4), 100, dtype=torch.uint8)
    out = C.corrupt(gray, "brightness", 1, None)
    assert bool((out == 100 + round(0.05 * 255)).all())
    rgb = torch.tensor([100, 50, 20], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    out = C.corrupt(rgb, "brightness", 2, None).float()
    ratio = out[0, :, 0, 0] / torch.tensor([100.0, 50.0, 20.0])
    assert torch.allclose(ratio, ratio[0].expand(3), atol=0.03)


def test_gaussian_blur_matrix_matches_padded_convolution():
    x = IMAGE_SETS["rgb32"].float()
    for sigma in (0.4, 1.0, 3.5):
        r = max(1, int(torch.tensor(3 * sigma).ceil()))
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        g = torch.exp(-(t**2) / (2 * sigma**2))
        g = (g / g.sum()).float()
        k = (g[:, None] * g[None, :]).expand(3, 1, 2 * r + 1, 2 * r + 1)
        ref = F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), k, groups=3)
        assert torch.allclose(C._gaussian_blur(x, sigma), ref, atol=1e-3)
