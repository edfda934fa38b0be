"""MATLAB-compatible bicubic `imresize`, the resampler that made the SR benchmarks' LR images.

What makes it MATLAB's and not just "a bicubic":
- Keys cubic with a = -0.5, 4 taps; on downscaling the kernel is stretched by 1/scale (and its
  height shrunk by scale), which is MATLAB's antialiasing.
- Output size ceil(scale * input); output pixel x (0-based) samples input position
  (x + 0.5) / scale - 0.5, i.e. pixel centres are aligned, not corners.
- Samples outside the image are mirrored including the edge pixel (..., 1, 0 | 0, 1, ...),
  repeated with period 2n as MATLAB's index folding does, so even huge kernels stay defined.
- Each output row of weights is normalised to sum to one.

Arithmetic is float64 throughout. MATLAB itself casts a uint8 image back to uint8 after each
1-D pass; like the SR literature's Python ports, `imresize_uint8` rounds once, at the end.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

KERNEL_TAPS = 4  # support of the cubic kernel, in input pixels, when not stretched


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _exact(scale: float | Fraction) -> Fraction:
    # 1/3 as a float times 255 is not exactly 85; a fraction keeps ceil() honest.
    return Fraction(scale).limit_denominator(1 << 20)


def output_length(length: int, scale: float | Fraction) -> int:
    return math.ceil(length * _exact(scale))


def weight_matrix(in_length: int, scale: float | Fraction) -> np.ndarray:
    """(out_length, in_length) float64 matrix M with resized = M @ signal, mirroring folded in.
    Shrinking stretches the kernel by 1 / scale (MATLAB's antialiasing)."""
    exact = _exact(scale)
    out_length = output_length(in_length, exact)
    s = float(exact)
    stretch = s < 1
    width = KERNEL_TAPS / s if stretch else KERNEL_TAPS

    centre = (np.arange(out_length, dtype=np.float64) + 0.5) / s - 0.5
    first = np.floor(centre - width / 2)
    taps = math.ceil(width) + 2  # one spare tap each side; its weight is zero when unused
    index = first[:, None] + np.arange(taps)[None, :]
    distance = centre[:, None] - index
    weights = s * cubic(s * distance) if stretch else cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)

    folded = np.mod(index.astype(np.int64), 2 * in_length)
    folded = np.where(folded < in_length, folded, 2 * in_length - 1 - folded)
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out_length), taps), folded.ravel()), weights.ravel())
    return matrix


def imresize(image: np.ndarray, scale: float | Fraction) -> np.ndarray:
    """Resize an H x W or H x W x C image by `scale` (e.g. 1/3) to ceil(scale * size); float64
    result, not rounded. Values are used as given (uint8 images stay on the 0..255 scale)."""
    array = np.asarray(image, dtype=np.float64)
    if array.ndim not in (2, 3):
        raise ValueError(f"expected an H x W or H x W x C image, got shape {array.shape}")
    height, width = array.shape[:2]
    rows = weight_matrix(height, scale)
    cols = weight_matrix(width, scale)
    # Separable: rows first, then columns (MATLAB's order for equal scale factors).
    resized = np.tensordot(rows, array, axes=(1, 0))
    resized = np.tensordot(cols, resized, axes=(1, 1))  # width axis now leads
    return np.moveaxis(resized, 0, 1)


def imresize_uint8(image: np.ndarray, scale: float | Fraction) -> np.ndarray:
    """`imresize` of an 8-bit image, rounded once to uint8 (half away from zero, as MATLAB)."""
    resized = imresize(image, scale)
    return np.clip(np.floor(resized + 0.5), 0, 255).astype(np.uint8)
