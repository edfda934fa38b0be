"""MATLAB bicubic imresize against hand-computed weights, a direct 2-D implementation and Pillow."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from rt4ksr_nodes.evaluate.imresize import imresize, imresize_uint8, output_length, weight_matrix


def keys(x: float) -> float:
    """Keys' cubic, a = -0.5, written from its piecewise definition."""
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    if x <= 2:
        return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return 0.0


def mirror(i: int, n: int) -> int:
    """Half-sample symmetric extension, stepping back inside one reflection at a time."""
    while not 0 <= i < n:
        i = -1 - i if i < 0 else 2 * n - 1 - i
    return i


def direct_resize(image: np.ndarray, scale: Fraction) -> np.ndarray:
    """Non-separable reference: every output pixel sums 2-D weights over its input neighbourhood.

    Uses MATLAB's 1-based coordinates: output x maps to u = x / s + (1 - 1 / s) / 2.
    """
    s = float(scale)
    kernel_scale = min(s, 1.0)  # antialiasing stretches the kernel only when shrinking
    reach = 2 / kernel_scale
    in_h, in_w = image.shape[:2]
    out_h, out_w = math.ceil(in_h * scale), math.ceil(in_w * scale)
    out = np.zeros((out_h, out_w) + image.shape[2:])
    for y in range(1, out_h + 1):
        v = y / s + (1 - 1 / s) / 2
        for x in range(1, out_w + 1):
            u = x / s + (1 - 1 / s) / 2
            total, norm = 0.0, 0.0
            for p in range(math.floor(v - reach), math.ceil(v + reach) + 1):
                wy = kernel_scale * keys(kernel_scale * (v - p))
                for q in range(math.floor(u - reach), math.ceil(u + reach) + 1):
                    w = wy * kernel_scale * keys(kernel_scale * (u - q))
                    total = total + w * image[mirror(p - 1, in_h), mirror(q - 1, in_w)]
                    norm += w
            out[y - 1, x - 1] = total / norm
    return out


@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(1, 3), Fraction(2), Fraction(3)])
def test_matches_direct_2d_implementation(scale):
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(13, 17, 3)).astype(np.uint8)
    np.testing.assert_allclose(imresize(image, scale), direct_resize(image, scale), atol=1e-9)


def test_tiny_image_folds_indices_more_than_once():
    # A 3-pixel side shrunk by 3 has a 12-tap kernel: indices reflect repeatedly.
    image = np.array([[10.0, 200.0, 30.0], [0.0, 255.0, 90.0], [40.0, 5.0, 120.0]])
    np.testing.assert_allclose(
        imresize(image, Fraction(1, 3)), direct_resize(image, Fraction(1, 3)), atol=1e-9
    )


def test_downscale_by_two_weights_by_hand():
    # Antialiased x1/2: taps at distances 0.5, 1.5, 2.5, 3.5 of the kernel stretched to width 8,
    # i.e. 0.5 * cubic(d / 2): cubic(0.25) = 0.8671875, cubic(0.75) = 0.2265625,
    # cubic(1.25) = -0.0703125, cubic(1.75) = -0.0234375.
    expected = 0.5 * np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875])
    expected = np.concatenate([expected, expected[::-1]])
    row = weight_matrix(20, 0.5)[5]  # output 5 is centred between inputs 10 and 11
    np.testing.assert_allclose(row[7:15], expected, rtol=0, atol=1e-15)
    assert row[:7].sum() == 0 and row[15:].sum() == 0


@pytest.mark.parametrize(
    "size, scale, expected",
    [(255, Fraction(1, 3), 85), (256, 0.5, 128), (255, 0.5, 128), (17, 2, 34), (10, 3, 30)],
)
def test_output_sizes(size, scale, expected):
    assert output_length(size, scale) == expected
    assert imresize(np.zeros((size, 5)), scale).shape[0] == expected


def test_float_one_third_gives_exact_size():
    assert imresize(np.zeros((255, 255, 3)), 1 / 3).shape == (85, 85, 3)


@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(1, 3), Fraction(1, 4), 2, 3])
def test_constant_image_stays_constant(scale):
    image = np.full((31, 26, 3), 173, dtype=np.uint8)
    np.testing.assert_allclose(imresize(image, scale), 173.0, atol=1e-10)
    assert (imresize_uint8(image, scale) == 173).all()


def test_downscaling_is_antialiased():
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    naive = checker[::2, ::2]
    assert np.ptp(naive) == 0 and abs(float(naive[0, 0]) - 127.5) == 127.5  # aliased to one colour
    small = imresize(checker, 0.5)
    # Away from the mirrored edges the stretched kernel averages the pattern to exact mid-grey.
    np.testing.assert_allclose(small[4:-4, 4:-4], 127.5, atol=1e-9)
    assert np.abs(small - 127.5).max() < 12


@pytest.mark.parametrize("factor", [3, 4])
def test_agrees_with_pillow_float_bicubic_away_from_edges(factor):
    # Pillow's BICUBIC is also Keys a = -0.5 with antialiasing and pixel-centre alignment; it only
    # differs at the edges (it renormalises a truncated kernel instead of mirroring).
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, size=(12 * factor, 15 * factor))
    ours = imresize(image, Fraction(1, factor))
    pil = Image.fromarray(image.astype(np.float32), "F").resize((15, 12), Image.BICUBIC)
    np.testing.assert_allclose(ours[3:-3, 3:-3], np.asarray(pil)[3:-3, 3:-3], atol=1e-3)


def test_uint8_rounds_once_at_the_end_half_away_from_zero():
    """MATLAB's uint8 conversion: round half away from zero (k + 0.5 -> k + 1, where numpy's
    round would go to even), applied once to the exact result (the direct 2-D resize here)."""
    for k in range(255):
        pair = np.array([[k, k + 1], [k, k + 1]], dtype=np.uint8)  # halves to exactly k + 0.5
        assert imresize_uint8(pair, Fraction(1, 2)).item() == k + 1
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, size=(24, 30, 3)).astype(np.uint8)
    exact = direct_resize(image.astype(np.float64), Fraction(1, 3))
    out = imresize_uint8(image, Fraction(1, 3))
    assert out.dtype == np.uint8 and out.shape == (8, 10, 3)
    half_up = np.vectorize(lambda v: min(255, max(0, int(Decimal(v).quantize(0, ROUND_HALF_UP)))))
    expected = half_up(exact)
    clear = np.abs(exact - np.floor(exact) - 0.5) > 1e-6  # at a tie the two computations may split
    np.testing.assert_array_equal(out[clear], expected[clear])
