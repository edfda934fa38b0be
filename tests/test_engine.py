"""upscale(): whole-frame equality of tiles, exact sizes, precisions, alpha and gray handling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from engine_helpers import crop, psnr, reference, reference_alpha

from rt4ksr_nodes import upscale


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize(
    "height, width, tile_size",
    [
        (96, 96, 32),  # exact grid
        (96, 96, 46),  # 4-px last row and column
        (96, 128, 62),  # 34-px and 4-px last row / column
        (75, 61, 40),  # odd: padded to 76 x 62, thin last tiles
        (75, 61, 0),  # odd, whole frame
    ],
)
def test_tiled_equals_whole_frame(fused_models, scale, height, width, tile_size):
    model = fused_models[scale]
    image = crop("Set14", 2, height, width)
    out = upscale(model, image, tile_size=tile_size, precision="fp32", device="cpu")
    expected = reference(model, image)
    assert out.shape == (1, scale * height, scale * width, 3)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert (out - expected).abs().max().item() <= 1e-5


def test_train_form_tiles_match_too(train_models):
    model = train_models[2]
    image = crop("Set5", 1, 70, 90)
    out = upscale(model, image, tile_size=32, precision="fp32", device="cpu")
    assert (out - reference(model, image)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("height, width", [(1, 1), (1, 500), (500, 1), (7, 9), (2, 3)])
def test_exact_output_sizes(fused_models, scale, height, width):
    model = fused_models[scale]
    image = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(height))
    out = upscale(model, image, device="cpu")
    assert out.shape == (1, scale * height, scale * width, 3)
    assert (out - reference(model, image)).abs().max().item() <= 1e-5
    assert out.min() >= 0 and out.max() <= 1


def test_thin_strip_tiled(fused_models):
    model = fused_models[3]
    image = crop("Set14", 0, 1, 301)
    out = upscale(model, image, tile_size=64, device="cpu")
    assert out.shape == (1, 3, 903, 3)
    assert (out - reference(model, image)).abs().max().item() <= 1e-5


def test_batch_is_processed_image_by_image(fused_models):
    model = fused_models[2]
    image = torch.cat([crop("Set5", i, 48, 64) for i in range(3)])
    out = upscale(model, image, tile_size=32, device="cpu")
    assert (out - reference(model, image)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("scale", [2, 3])
def test_fp16_close_to_fp32(fused_models, scale):
    model = fused_models[scale]
    for set_name, index in [("Set5", 0), ("Set5", 2), ("Set14", 7)]:
        image = crop(set_name, index, 96, 96)
        out = upscale(model, image, precision="fp16", device="cpu", tile_size=64)
        assert out.dtype == torch.float32
        assert psnr(out, reference(model, image)) >= 50


def test_bf16_warns_and_costs_about_18_db(fused_models):
    model = fused_models[2]
    image = crop("Set5", 0, 96, 96)
    with pytest.warns(UserWarning, match="bf16"):
        out = upscale(model, image, precision="bf16", device="cpu")
    assert 33 <= psnr(out, reference(model, image)) < 50


def test_auto_precision_is_fp32_on_cpu(fused_models):
    model = fused_models[2]
    image = crop("Set5", 3, 40, 40)
    out = upscale(model, image, device="cpu")
    # fp32 agrees to rounding (the fused LayerNorm sums in another order); fp16 is ~1e-3 off.
    assert (out - reference(model, image)).abs().max().item() <= 1e-5


def _rgba(height: int, width: int, alpha: torch.Tensor | float) -> torch.Tensor:
    rgb = crop("Set5", 4, height, width)
    plane = torch.full((1, height, width, 1), alpha) if isinstance(alpha, float) else alpha
    return torch.cat([rgb, plane], dim=-1)


def test_alpha_bicubic(fused_models):
    model = fused_models[2]
    alpha = torch.rand(1, 45, 50, 1, generator=torch.Generator().manual_seed(1))
    image = _rgba(45, 50, alpha)
    out = upscale(model, image, alpha="bicubic", tile_size=32, device="cpu")
    expected = F.interpolate(
        alpha.permute(0, 3, 1, 2), size=(90, 100), mode="bicubic", align_corners=False
    ).clamp(0, 1)
    assert out.shape == (1, 90, 100, 4)
    assert (out[..., 3] - expected[:, 0]).abs().max().item() <= 1e-6
    assert (out[..., :3] - reference(model, image[..., :3])).abs().max().item() <= 1e-5


def test_constant_alpha_stays_constant_with_bicubic(fused_models):
    out = upscale(fused_models[3], _rgba(20, 30, 0.5), alpha="bicubic", device="cpu")
    assert torch.allclose(out[..., 3], torch.full((1, 60, 90), 0.5), atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3])
def test_alpha_by_model(fused_models, scale):
    model = fused_models[scale]
    alpha = crop("Set14", 0, 41, 33)[..., :1]
    alpha[:, 5:20, 4:18] = 1.0  # an opaque block and a transparent one inside natural alpha
    alpha[:, 25:, 20:] = 0.0
    image = _rgba(41, 33, alpha)
    out = upscale(model, image, alpha="model", tile_size=32, device="cpu")
    assert out.shape == (1, 41 * scale, 33 * scale, 4)
    assert (out[..., 3] - reference_alpha(model, alpha)).abs().max().item() <= 1e-5
    assert (out[..., :3] - reference(model, image[..., :3])).abs().max().item() <= 1e-5
    inner = slice(6 * scale, 19 * scale), slice(5 * scale, 17 * scale)
    assert (out[0, inner[0], inner[1], 3] == 1.0).all()


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_flat_alpha_is_kept_exactly_by_the_model(fused_models, scale, value):
    # Without care the network's zero padding gives opaque sprites a translucent rim.
    out = upscale(fused_models[scale], _rgba(24, 30, value), alpha="model", device="cpu")
    assert (out[..., 3] == value).all()


def test_alpha_discard(fused_models):
    model = fused_models[2]
    image = _rgba(30, 31, 1.0)
    out = upscale(model, image, alpha="discard", device="cpu")
    assert out.shape == (1, 60, 62, 3)
    assert (out - reference(model, image[..., :3])).abs().max().item() <= 1e-5


def test_gray_runs_as_rgb_and_returns_the_mean(fused_models):
    model = fused_models[2]
    gray = crop("Set14", 1, 33, 40)[..., :1]
    out = upscale(model, gray, tile_size=32, device="cpu")
    assert out.shape == (1, 66, 80, 1)
    expected = reference(model, gray.expand(-1, -1, -1, 3)).mean(-1, keepdim=True)
    assert (out - expected).abs().max().item() <= 1e-5


def test_gray_with_alpha_is_gray_plus_the_alpha_plane(fused_models):
    model = fused_models[3]
    gray = crop("Set14", 1, 33, 40)[..., :1]
    alpha = crop("Set5", 2, 33, 40)[..., 1:2]
    image = torch.cat([gray, alpha], dim=-1)
    out = upscale(model, image, tile_size=32, device="cpu")
    assert out.shape == (1, 99, 120, 2)
    expected = reference(model, gray.expand(-1, -1, -1, 3)).mean(-1)
    assert (out[..., 0] - expected).abs().max().item() <= 1e-5
    assert (out[..., 1] - reference_alpha(model, alpha)).abs().max().item() <= 1e-5
    discarded = upscale(model, image, alpha="discard", device="cpu")
    assert discarded.shape == (1, 99, 120, 1)
    assert (discarded[..., 0] - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tile_size": 16}, "tile_size"),
        ({"alpha": "premultiply"}, "alpha"),
        ({"precision": "int8"}, "precision"),
    ],
)
def test_bad_arguments(fused_models, kwargs, message):
    with pytest.raises(ValueError, match=message):
        upscale(fused_models[2], torch.rand(1, 8, 8, 3), device="cpu", **kwargs)


def test_bad_images(fused_models):
    with pytest.raises(ValueError, match="channels"):
        upscale(fused_models[2], torch.rand(1, 8, 8, 5), device="cpu")
    with pytest.raises(ValueError, match="B x H x W x C"):
        upscale(fused_models[2], torch.rand(8, 8, 3), device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("scale", [2, 3])
def test_cuda_fp16_auto_matches_fp32_and_returns_on_cpu(fused_models, scale):
    """auto on CUDA: fp16 channels_last, whole frame and tiled, the result on the CPU."""
    model = fused_models[scale]
    image = crop("Set14", 2, 256, 320)
    for tile_size in (0, 96):
        out = upscale(model, image, device="cuda", tile_size=tile_size)
        assert out.device.type == "cpu" and out.dtype == torch.float32
        assert psnr(out, reference(model, image)) >= 50
    on_device = upscale(model, image, device="cuda", output_device="cuda")
    assert on_device.device.type == "cuda"
