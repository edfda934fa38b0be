"""How big a tile fits: a per-pixel activation estimate against the device's free memory.

Live tensors at the peak of one forward pass, in values per low-resolution input pixel, with
C = model.in_channels, F = model.features, s = model.scale (unshuffled maps have 1/4 of the
pixels):
- body: the input (C) and ~3 feature maps inside a LayerNorm (3 F / 4);
- upsample: the input (C), the features (F / 4) and the conv output (C s^2), which is written
  straight into the caller's image (network.write_blocks), so no shuffled copy exists.
The peak is the larger of the two: 21 and 36 values (84 and 144 bytes in fp32) at x2 and x3.
Measured on the CPU (ru_maxrss growth of one fp32 forward of the engine's network on 1920x1080):
86 and 122 bytes per pixel with glibc's default allocation, 168 and 252 with the engine's
allocator policy (cpu.py), under which freed buffers stay in a heap that fragments. SAFETY
covers that, convolution workspaces and layout reorders.
"""

from __future__ import annotations

import math

import torch

from .tiling import MIN_TILE

SAFETY = 2.0
# Share of the free memory the engine plans to use; the rest stays for everything else.
USABLE = 0.8
# Asked for on top of the plan: cuDNN / cuBLAS handles and workspaces, allocator rounding.
MARGIN = 256 << 20


def bytes_per_pixel(model, dtype: torch.dtype) -> float:
    """Peak activation bytes of one forward pass per low-resolution input pixel."""
    channels, features, scale = model.in_channels, model.features, model.scale
    body = channels + 3 * features / 4
    upsample = channels + features / 4 + channels * scale * scale
    return max(body, upsample) * dtype.itemsize * SAFETY


def auto_tile(
    height: int, width: int, context: int, per_pixel: float, budget: float
) -> int:
    """The whole frame's longer side when it fits in `budget` bytes, else the largest even
    square core whose window (core plus context on both sides) fits, but at least MIN_TILE
    (out-of-memory handling then has the last word)."""
    if height * width * per_pixel <= budget:
        return max(height, width)
    side = int((max(budget, 0) / per_pixel) ** 0.5) - 2 * context
    return max(side - side % 2, MIN_TILE)


def plan_memory(
    model, padded: tuple[int, int], dtype: torch.dtype, free: int, output_bytes: int
) -> tuple[bool, float]:
    """(canvas on the device?, bytes left for activations) for one padded plane, with `free`
    bytes free on the device of which the caller keeps `output_bytes`. The input plane comes
    first; the canvas stays on the device when it takes at most half of what is left."""
    plane = padded[0] * padded[1]
    budget = USABLE * free - output_bytes - 3 * plane * dtype.itemsize
    canvas = 3 * model.scale**2 * plane * dtype.itemsize
    if canvas <= budget / 2:
        return True, budget - canvas
    return False, budget


def whole_frame_bytes(
    model, padded: tuple[int, int], dtype: torch.dtype, output_bytes: int
) -> int:
    """Free device memory with which plan_memory keeps the canvas on the device and auto_tile
    takes the whole plane as one tile, plus MARGIN."""
    plane = padded[0] * padded[1]
    inputs = 3 * plane * dtype.itemsize
    canvas = 3 * model.scale**2 * plane * dtype.itemsize
    activations = plane * bytes_per_pixel(model, dtype)
    held = output_bytes + inputs + max(2 * canvas, canvas + activations)
    return math.ceil(held / USABLE) + MARGIN
