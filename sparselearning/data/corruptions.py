"""Common image corruptions at 5 severities, for offline robustness measurement on any dataset.

In the spirit of Hendrycks & Dietterich's CIFAR-10-C (same names where the idea is the same), but
re-implemented as vectorised torch operations that work on grayscale or RGB images of any size
(28 px Fashion-MNIST as well as 32 px CIFAR). Parameters given in pixels are for 32 px images and
scale with the image size. Severity parameters increase with severity. Every random number is drawn
on the CPU from the given ``torch.Generator`` (then moved to the images' device), so a corruption is
deterministic for a fixed generator state and identical on CPU and CUDA up to float rounding.

Differences from CIFAR-10-C worth knowing: jpeg_compression is a JPEG-like 8x8 DCT quantisation with
the IJG tables (no chroma subsampling, no entropy coding); fog uses multi-octave value noise instead
of the diamond-square plasma; motion_blur is a centred line kernel at a random angle per image;
brightness adds to HSV value (identical to adding to the gray level for grayscale images).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UsageError

__all__ = ["CORRUPTIONS", "SEVERITY_PARAMS", "corrupt"]

#: Parameter per severity 1..5 (increasing distortion).
SEVERITY_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std (images in [0, 1])
    "shot_noise": (500.0, 250.0, 100.0, 75.0, 50.0),  # Poisson photon count at full intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # salt-and-pepper fraction
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),  # multiplicative noise std
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma, px at 32 px
    "defocus_blur": (0.75, 1.0, 1.25, 1.5, 2.0),  # disk radius, px at 32 px
    "motion_blur": (1.5, 2.5, 3.5, 4.5, 6.0),  # line length, px at 32 px
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),  # largest zoom factor (steps of 0.01)
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # contrast factor (smaller = stronger)
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "fog": ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)),  # (strength, octave decay)
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # resolution factor (blocks of ~1/factor px)
    "jpeg_compression": (80, 65, 58, 50, 40),  # JPEG quality
    "elastic_transform": (0.3, 0.45, 0.6, 0.8, 1.0),  # RMS displacement, px at 32 px (smoothing 4 px)
}
CORRUPTIONS: tuple[str, ...] = tuple(SEVERITY_PARAMS)


# --------------------------------------------------------------------------- helpers
def _rand(kind: str, shape, generator, device) -> torch.Tensor:
    if kind == "normal":
        t = torch.randn(shape, generator=generator)
    else:
        t = torch.rand(shape, generator=generator)
    return t.to(device)


def _depthwise(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of every image with ``kernel`` (k, k) shared, or (N, k, k) per image.

    Reflect padding keeps the size.
    """
    n, c, h, w = x.shape
    k = int(kernel.shape[-1])
    r = k // 2
    mode = "reflect" if r < min(h, w) else "replicate"
    xp = F.pad(x, (r, r, r, r), mode=mode)
    kernel = kernel.to(x.device, x.dtype)
    if kernel.dim() == 2:  # one single-channel convolution over all N*C planes
        out = F.conv2d(xp.reshape(n * c, 1, h + 2 * r, w + 2 * r), kernel.view(1, 1, k, k))
        return out.view(n, c, h, w)
    weight = kernel.view(n, 1, 1, k, k).expand(n, c, 1, k, k).reshape(n * c, 1, k, k)
    out = F.conv2d(xp.reshape(1, n * c, h + 2 * r, w + 2 * r), weight, groups=n * c)
    return out.view(n, c, h, w)


def _mirror(i: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect integer indices into [0, size) without repeating the edge (as F.pad 'reflect'), any distance."""
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * (size - 1)
    m = i.remainder(period)
    return torch.where(m < size, m, period - m)


def _blur_matrix(size: int, taps: torch.Tensor, device, dtype) -> torch.Tensor:
    """(size, size) matrix applying the centred 1-D filter ``taps`` with reflect boundary handling."""
    r = (taps.numel() - 1) // 2
    rows = torch.arange(size).repeat_interleave(taps.numel())
    cols = _mirror(torch.arange(size)[:, None] + torch.arange(-r, r + 1)[None, :], size).reshape(-1)
    m = torch.zeros(size, size, dtype=torch.float64)
    m.index_put_((rows, cols), taps.to(torch.float64).repeat(size), accumulate=True)
    return m.to(device=device, dtype=dtype)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect boundaries, as two small matrix products (same size)."""
    h, w = x.shape[-2:]
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return _blur_matrix(h, g, x.device, x.dtype) @ x @ _blur_matrix(w, g, x.device, x.dtype).T


def _pixelate_matrix(size: int, cells: int, device, dtype) -> torch.Tensor:
    """(size, size) matrix replacing each pixel by the mean of its cell; pixel j is in cell floor(j*cells/size)."""
    cell = (torch.arange(size) * cells) // size
    same = (cell[:, None] == cell[None, :]).to(dtype)
    return (same / same.sum(dim=1, keepdim=True)).to(device)


def _disk_kernel(radius: float, supersample: int = 8) -> torch.Tensor:
    """Fraction of each pixel covered by a disk of ``radius`` px (supersampled), normalised."""
    r = math.ceil(radius)
    k = 2 * r + 1
    sub = (torch.arange(supersample, dtype=torch.float32) + 0.5) / supersample - 0.5
    coords = (torch.arange(k, dtype=torch.float32) - r)[:, None] + sub[None, :]  # (k, ss)
    yy = coords.view(k, 1, supersample, 1)
    xx = coords.view(1, k, 1, supersample)
    cover = ((yy**2 + xx**2) <= radius**2).float().mean(dim=(2, 3))
    return cover / cover.sum()


def _motion_kernels(length: float, angles: torch.Tensor) -> torch.Tensor:
    """(N, k, k) centred line kernels of ``length`` px at ``angles`` (radians), bilinear splatting."""
    n = int(angles.shape[0])
    half = math.ceil(length / 2)
    k = 2 * half + 3
    c = k // 2
    m = max(2, math.ceil(length * 4) + 1)
    t = torch.linspace(-length / 2, length / 2, m)
    px = c + t[None, :] * torch.cos(angles)[:, None]  # (n, m)
    py = c - t[None, :] * torch.sin(angles)[:, None]
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    out = torch.zeros(n, k * k)
    for ox, oy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                        (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi = (x0 + ox).long().clamp(0, k - 1)
        yi = (y0 + oy).long().clamp(0, k - 1)
        out.scatter_add_(1, yi * k + xi, wgt)
    out = out / out.sum(dim=1, keepdim=True)
    return out.view(n, k, k)


def _identity_grid(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    n, c, h, w = x.shape
    theta = torch.tensor([[scale, 0.0, 0.0], [0.0, scale, 0.0]], dtype=x.dtype, device=x.device)
    return F.affine_grid(theta.expand(n, 2, 3), [n, c, h, w], align_corners=False)


def _zoom_matrix(size: int, zoom: float, device) -> torch.Tensor:
    """(size, size) bilinear resampling matrix that magnifies by ``zoom`` >= 1 about the centre.

    Output pixel i samples source coordinate (i + 0.5 - size/2) / zoom + size/2 - 0.5 (pixel centres),
    which stays inside the image for zoom >= 1.
    """
    i = torch.arange(size, dtype=torch.float64)
    u = ((i + 0.5 - size / 2) / zoom + size / 2 - 0.5).clamp(0, size - 1)
    j0 = u.floor().long().clamp(max=size - 1)
    frac = u - j0
    j1 = (j0 + 1).clamp(max=size - 1)
    m = torch.zeros(size, size, dtype=torch.float64)
    m[torch.arange(size), j0] += 1 - frac
    m[torch.arange(size), j1] += frac
    return m.to(device=device, dtype=torch.float32)


def _smooth_noise(n: int, h: int, w: int, decay: float, generator, device) -> torch.Tensor:
    """(n, 1, h, w) multi-octave value noise in [0, 1]: octave k has a (2^k + 1)^2 grid, weight decay^-k."""
    total = torch.zeros(n, 1, h, w)
    k = 1
    while True:
        g = 2**k + 1
        grid = torch.randn((n, 1, g, g), generator=generator)
        up = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)
        total += up * decay ** (-(k - 1))
        if g >= max(h, w):
            break
        k += 1
    lo = total.amin(dim=(1, 2, 3), keepdim=True)
    hi = total.amax(dim=(1, 2, 3), keepdim=True)
    return ((total - lo) / (hi - lo).clamp_min(1e-12)).to(device)


# JPEG (ITU T.81 Annex K) base quantisation tables.
_Q_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
_Q_CHROMA = torch.tensor([
    [17, 18, 24, 47, 99, 99, 99, 99], [18, 21, 26, 66, 99, 99, 99, 99],
    [24, 26, 56, 99, 99, 99, 99, 99], [47, 66, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99], [99, 99, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99], [99, 99, 99, 99, 99, 99, 99, 99]], dtype=torch.float32)


def _quality_table(base: torch.Tensor, quality: int) -> torch.Tensor:
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    return torch.floor((base * scale + 50.0) / 100.0).clamp(1, 255)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float32)
    d = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d  # orthonormal DCT-II; matches JPEG's FDCT scaling


def _jpeg_like(x255: torch.Tensor, quality: int) -> torch.Tensor:
    """x255: float (N, C, H, W) in [0, 255]. 8x8 block DCT quantisation, YCbCr for RGB."""
    n, c, h, w = x255.shape
    dev, dt = x255.device, x255.dtype
    if c == 3:
        r, g, b = x255.unbind(1)
        y = 0.299 * r + 0.587 * g + 0.114 * b
        cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
        cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
        planes = torch.stack([y, cb, cr], 1)
        tables = torch.stack([_quality_table(_Q_LUMA, quality)] + [_quality_table(_Q_CHROMA, quality)] * 2)
    else:
        planes = x255
        tables = _quality_table(_Q_LUMA, quality).expand(c, 8, 8)
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        planes = F.pad(planes, (0, pw, 0, ph), mode="replicate")
    hh, ww = planes.shape[2] // 8, planes.shape[3] // 8
    blocks = planes.reshape(n, c, hh, 8, ww, 8).permute(0, 1, 2, 4, 3, 5) - 128.0  # (n,c,hh,ww,8,8)
    d = _dct_matrix().to(dev, dt)
    q = tables.to(dev, dt).view(1, c, 1, 1, 8, 8)
    coef = d @ blocks @ d.T
    coef = torch.round(coef / q) * q
    rec = (d.T @ coef @ d + 128.0).permute(0, 1, 2, 4, 3, 5).reshape(n, c, hh * 8, ww * 8)[:, :, :h, :w]
    if c == 3:
        y, cb, cr = rec.unbind(1)
        r = y + 1.402 * (cr - 128.0)
        g = y - 0.344136 * (cb - 128.0) - 0.714136 * (cr - 128.0)
        b = y + 1.772 * (cb - 128.0)
        rec = torch.stack([r, g, b], 1)
    return rec


# --------------------------------------------------------------------------- main entry
def corrupt(images: torch.Tensor, corruption: str, severity: int,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Corrupt uint8 images (N, C, H, W), C in {1, 3}, at ``severity`` 1..5; returns uint8, same shape.

    Random corruptions draw from ``generator`` (a CPU ``torch.Generator``; torch's global RNG when
    None) on the CPU, so a fixed generator state gives the same result every time.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise UsageError("corrupt expects uint8 images of shape (N, C, H, W); convert with (x * 255).round().byte()")
    if int(images.shape[1]) not in (1, 3):
        raise UsageError(f"corrupt handles 1- or 3-channel images, got {images.shape[1]} channels")
    if corruption not in SEVERITY_PARAMS:
        raise UsageError(f"unknown corruption {corruption!r}; use one of: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise UsageError(f"severity must be an integer from 1 to 5, got {severity!r}")
    if generator is not None and generator.device.type != "cpu":
        raise UsageError("corrupt needs a CPU torch.Generator; create it with torch.Generator()")
    if images.shape[0] == 0:
        return images.clone()
    param = SEVERITY_PARAMS[corruption][severity - 1]
    dev = images.device
    n, c, h, w = images.shape
    px = min(h, w) / 32.0  # pixel-valued parameters are specified for 32 px images
    x = images.to(torch.float32) / 255.0

    if corruption == "gaussian_noise":
        out = x + _rand("normal", x.shape, generator, dev) * param
    elif corruption == "shot_noise":
        out = torch.poisson(x.cpu() * param, generator=generator).to(dev) / param
    elif corruption == "impulse_noise":
        u = _rand("uniform", x.shape, generator, dev)
        out = torch.where(u < param / 2, torch.ones_like(x), x)
        out = torch.where(u > 1 - param / 2, torch.zeros_like(x), out)
    elif corruption == "speckle_noise":
        out = x + x * _rand("normal", x.shape, generator, dev) * param
    elif corruption == "gaussian_blur":
        out = _gaussian_blur(x, param * px)
    elif corruption == "defocus_blur":
        out = _depthwise(x, _disk_kernel(param * px))
    elif corruption == "motion_blur":
        angles = (torch.rand((n,), generator=generator) * 2 - 1) * (math.pi / 4)
        out = _depthwise(x, _motion_kernels(param * px, angles))
    elif corruption == "zoom_blur":
        zooms = torch.arange(1.0, param - 1e-9, 0.01).tolist() + [param]
        acc = x.clone()
        for z in zooms[1:]:  # centre zoom by z = separable bilinear resampling (rows, then columns)
            acc += _zoom_matrix(h, z, dev) @ x @ _zoom_matrix(w, z, dev).T
        out = acc / len(zooms)
    elif corruption == "contrast":
        means = x.mean(dim=(2, 3), keepdim=True)
        out = (x - means) * param + means
    elif corruption == "brightness":
        v = x.amax(dim=1, keepdim=True)
        v_new = (v + param).clamp(0, 1)
        out = torch.where(v > 0, x * (v_new / v.clamp_min(1e-12)), v_new.expand_as(x))
    elif corruption == "fog":
        strength, decay = param
        fog = _smooth_noise(n, h, w, decay, generator, dev)
        top = x.amax(dim=(1, 2, 3), keepdim=True)
        out = (x + strength * fog) * top / (top + strength)
    elif corruption == "pixelate":
        ph = _pixelate_matrix(h, max(1, int(round(h * param))), dev, x.dtype)
        pw = _pixelate_matrix(w, max(1, int(round(w * param))), dev, x.dtype)
        out = ph @ x @ pw.T  # every pixel becomes the mean of its (non-overlapping) block
    elif corruption == "jpeg_compression":
        out = _jpeg_like(x * 255.0, int(param)) / 255.0
    elif corruption == "elastic_transform":
        field = _rand("uniform", (n, 2, h, w), generator, dev) * 2 - 1
        field = _gaussian_blur(field, 4.0 * px)
        rms = field.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        disp_px = field / rms * (param * px)  # (n, 2, h, w): x then y displacement in pixels
        scale = torch.tensor([2.0 / w, 2.0 / h], device=dev).view(1, 2, 1, 1)
        grid = _identity_grid(x) + (disp_px * scale).permute(0, 2, 3, 1)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    else:  # pragma: no cover
        raise AssertionError(corruption)
    return (out.clamp(0, 1) * 255.0).round().to(torch.uint8)
