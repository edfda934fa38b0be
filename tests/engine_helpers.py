"""Ground truth for the engine tests: the plain model forward, computed independently."""

from __future__ import annotations

import numpy as np
import torch

from ground_truth import image_paths, load_rgb


def reference(model, image: torch.Tensor) -> torch.Tensor:
    """The whole-frame result for a B x H x W x 3 image: numpy edge-padded to even size, one
    plain forward, cropped, clamped."""
    batch, height, width, _ = image.shape
    padded = np.pad(
        image.numpy(), ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge"
    )
    with torch.no_grad():
        out = model(torch.from_numpy(padded).permute(0, 3, 1, 2))
    scale = model.scale
    return out[:, :, : scale * height, : scale * width].clamp(0, 1).permute(0, 2, 3, 1)


def as_image(blocks: torch.Tensor, scale: int) -> torch.Tensor:
    """The engine network's raw output (N x f*f*3 x h x w, channels in (row, column, colour)
    order, f = 2 * scale) as a clamped N x fh x fw x 3 image, by pixel_shuffle: independent of
    the engine's own writer."""
    f = 2 * scale
    n, _, h, w = blocks.shape
    colour_major = blocks.float().reshape(n, f, f, 3, h, w).permute(0, 3, 1, 2, 4, 5)
    pixels = torch.nn.functional.pixel_shuffle(colour_major.reshape(n, 3 * f * f, h, w), f)
    return pixels.clamp(0, 1).permute(0, 2, 3, 1)


def reference_alpha(model, alpha: torch.Tensor) -> torch.Tensor:
    """The network's gray output, but the exact source value wherever the source alpha is
    constant over the pixel's 3 x 3 neighbourhood (edge pixels: the part inside the image)."""
    scale = model.scale
    network = reference(model, alpha.expand(-1, -1, -1, 3)).mean(-1)[0].numpy()
    plane = alpha[0, ..., 0].numpy()
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(plane, 1, mode="edge"), (3, 3))
    flat = windows.min(axis=(-1, -2)) == windows.max(axis=(-1, -2))
    block = np.ones((scale, scale), dtype=bool)
    expected = np.where(np.kron(flat, block), np.kron(plane, block), network)
    return torch.from_numpy(expected)[None]


def crop(set_name: str, index: int, height: int, width: int) -> torch.Tensor:
    """1 x height x width x 3 from the top left of a benchmark image."""
    image = load_rgb(image_paths(set_name)[index]).permute(0, 2, 3, 1)
    return image[:, :height, :width].contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).square().mean().item()
    return 10 * np.log10(1 / mse)
