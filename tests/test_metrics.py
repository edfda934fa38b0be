"""PSNR, SSIM and Y against closed forms, hand-computed values and a direct windowed SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rt4ksr_nodes.evaluate.metrics import measure, psnr, rgb_to_y, ssim, to_uint8


def random_image(shape, seed, low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, size=shape).astype(np.uint8)


@pytest.mark.parametrize("offset", [1, 3, 10])
def test_psnr_of_a_constant_offset(offset):
    hr = random_image((20, 24, 3), 0, low=20, high=230)
    sr = hr.astype(np.int16) + offset
    assert psnr(sr, hr) == pytest.approx(20 * math.log10(255 / offset), abs=1e-12)
    # Y moves by offset * (65.481 + 128.553 + 24.966) / 255 = offset * 219 / 255.
    scores = measure(sr, hr, crop_border=0)
    assert scores["psnr_rgb"] == pytest.approx(20 * math.log10(255 / offset), abs=1e-12)
    assert scores["psnr_y"] == pytest.approx(20 * math.log10(255 / (offset * 219 / 255)), abs=1e-9)


def test_psnr_identical_is_infinite_and_crop_border_removes_edges():
    hr = random_image((30, 30, 3), 1)
    sr = hr.copy()
    sr[:2] = 0
    sr[:, -2:] = 255
    assert math.isfinite(measure(sr, hr, crop_border=1)["psnr_rgb"])
    assert measure(sr, hr, crop_border=2)["psnr_rgb"] == math.inf


@pytest.mark.parametrize(
    "rgb, y",
    [
        ((0, 0, 0), 16.0),
        ((255, 255, 255), 235.0),
        ((255, 0, 0), 16 + 65.481),
        ((0, 255, 0), 16 + 128.553),
        ((0, 0, 255), 16 + 24.966),
        ((100, 50, 200), 16 + (65.481 * 100 + 128.553 * 50 + 24.966 * 200) / 255),
    ],
)
def test_y_by_hand(rgb, y):
    assert rgb_to_y(np.array([[rgb]], dtype=np.uint8))[0, 0] == pytest.approx(y, abs=1e-12)


def test_upstream_y_swaps_red_and_blue_weights():
    red, blue = np.array([[[255, 0, 0]]]), np.array([[[0, 0, 255]]])
    assert rgb_to_y(red, upstream=True)[0, 0] == pytest.approx(16 + 24.966)
    assert rgb_to_y(blue, upstream=True)[0, 0] == pytest.approx(16 + 65.481)


def test_to_uint8_clamps_scales_and_rounds():
    image = torch.tensor([-0.2, 0.0, 0.3, 0.5, 1.0, 1.7]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    out = to_uint8(image)
    assert out.dtype == np.uint8 and out.shape == (1, 6, 3)
    # In float32 both 0.3 * 255 and 0.5 * 255 land exactly on .5: halves round to even.
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 76, 128, 255, 255])


def direct_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 computed window by window with explicit Gaussian-weighted statistics."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    offsets = np.arange(11) - 5
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    window /= window.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            mu_a, mu_b = (window * pa).sum(), (window * pb).sum()
            var_a = (window * (pa - mu_a) ** 2).sum()
            var_b = (window * (pb - mu_b) ** 2).sum()
            cov = (window * (pa - mu_a) * (pb - mu_b)).sum()
            values.append(
                (2 * mu_a * mu_b + c1) * (2 * cov + c2)
                / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
            )
    return float(np.mean(values))


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matches_direct_windowed_computation(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(19, 23)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 25, size=a.shape), 0, 255).round()  # correlated, not equal
    expected = direct_ssim(a, b)
    assert 0.1 < expected < 0.99
    assert ssim(a, b) == pytest.approx(expected, abs=1e-12)


def test_rgb_ssim_is_the_channel_mean():
    a, b = random_image((16, 18, 3), 2), random_image((16, 18, 3), 3)
    per_channel = [direct_ssim(a[..., c], b[..., c]) for c in range(3)]
    assert ssim(a, b) == pytest.approx(np.mean(per_channel), abs=1e-12)


def test_ssim_of_identical_images_is_one():
    a = random_image((40, 33, 3), 4)
    scores = measure(a, a.copy(), crop_border=2)
    assert scores["ssim_rgb"] == pytest.approx(1.0, abs=1e-12)
    assert scores["ssim_y"] == pytest.approx(1.0, abs=1e-12)


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="11 x 11"):
        ssim(np.zeros((10, 30)), np.zeros((10, 30)))
