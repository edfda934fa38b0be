"""PSNR and SSIM as the super-resolution literature computes them, in float64 on 8-bit values.

- Inputs are H x W x 3 arrays on the 0..255 scale (8-bit images; SR outputs are first rounded to
  8 bits with `to_uint8`, as a saved PNG would be).
- Y is ITU-R BT.601 luma of MATLAB's `rgb2ycbcr` for double input, on the 0..255 scale:
  Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, so Y lies in [16, 235]; not rounded.
- SSIM is Wang et al. (2004): 11 x 11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255,
  statistics only where the window fits inside the image ('valid'); RGB SSIM is the mean over
  the three channels.
- `crop_border` pixels are removed on every side before anything is measured.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PEAK = 255.0
BT601_Y = (65.481, 128.553, 24.966)
# Upstream RT4KSR's metrics came from an OpenCV (BGR) pipeline but are fed RGB arrays, so its Y
# weighs R with the blue coefficient and B with the red one. Only for reproducing its numbers.
UPSTREAM_Y = BT601_Y[::-1]
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """C x H x W (or 1 x C x H x W) float tensor in [0, 1] -> H x W x C uint8: clamp, x255, round.

    Rounds half to even, like the upstream evaluation's `np.round`.
    """
    array = image.detach().squeeze(0).float().clamp(0, 1).mul(PEAK).round()
    return array.to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def rgb_to_y(image: np.ndarray, upstream: bool = False) -> np.ndarray:
    """H x W x 3 RGB on 0..255 -> H x W float64 Y in [16, 235] (see module docstring)."""
    weights = np.asarray(UPSTREAM_Y if upstream else BT601_Y) / PEAK
    return 16.0 + np.asarray(image, dtype=np.float64) @ weights


def shave(image: np.ndarray, border: int) -> np.ndarray:
    if border <= 0:
        return image
    return image[border:-border, border:-border]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB for peak 255 over all values of both arrays; inf when they are equal."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(PEAK * PEAK / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """1-D normalised Gaussian; the 2-D window is its outer product with itself."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(plane: np.ndarray, g: np.ndarray) -> np.ndarray:
    # Separable Gaussian correlation, output only where the whole window lies inside the plane.
    n = g.size
    rows = np.lib.stride_tricks.sliding_window_view(plane, n, axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(rows, n, axis=1) @ g


def ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two H x W planes on the 0..255 scale (each side at least 11 pixels)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, got {a.shape}")
    g = gaussian_window()
    c1, c2 = (SSIM_K1 * PEAK) ** 2, (SSIM_K2 * PEAK) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a * mu_a
    var_b = _filter_valid(b * b, g) - mu_b * mu_b
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    denominator = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float(np.mean(numerator / denominator))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of H x W planes, or mean SSIM over the channels of H x W x C images."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        return ssim_plane(a, b)
    return float(np.mean([ssim_plane(a[..., c], b[..., c]) for c in range(a.shape[-1])]))


def measure(
    output: np.ndarray, reference: np.ndarray, crop_border: int, upstream_y: bool = False
) -> dict[str, float]:
    """psnr_rgb, ssim_rgb, psnr_y, ssim_y of two H x W x 3 8-bit images."""
    if output.shape != reference.shape:
        raise ValueError(f"image shapes differ: {output.shape} vs {reference.shape}")
    out = shave(np.asarray(output, np.float64), crop_border)
    ref = shave(np.asarray(reference, np.float64), crop_border)
    out_y, ref_y = rgb_to_y(out, upstream_y), rgb_to_y(ref, upstream_y)
    return {
        "psnr_rgb": psnr(out, ref),
        "ssim_rgb": ssim(out, ref),
        "psnr_y": psnr(out_y, ref_y),
        "ssim_y": ssim(out_y, ref_y),
    }
