"""upscale(): any-size, tiled, memory-aware RT4KSR inference on ComfyUI IMAGE tensors."""

from __future__ import annotations

import numbers
from collections import deque
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .device import (
    free_memory,
    is_out_of_memory,
    resolve_device,
    resolve_dtype,
    resolve_output_device,
)
from .errors import UpscaleCancelled, UpscaleOutOfMemory
from .memory import auto_tile, bytes_per_pixel, plan_memory, whole_frame_bytes
from .network import write_blocks
from .prepare import accelerated
from .tiling import MIN_TILE, Box, Tile, context_for, even_tile, split, window

ALPHA_MODES = ("model", "bicubic", "discard")

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]


def upscale(
    model: torch.nn.Module,
    image: torch.Tensor,
    *,
    tile_size: int = 0,
    precision: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    alpha: str = "model",
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    output_device: str | torch.device | None = None,
) -> torch.Tensor:
    """Upscale a ComfyUI IMAGE (B x H x W x C floats in [0, 1]) by `model.scale`.

    `model`: an RT4KSR network (model.arch.RT4KSR, from load_model or reparameterize; fused or
    train-time form). The engine runs its own arrangement of the model's weights (see
    network.py), not the model's forward.

    Returns B x sH x sW x C' float32 in [0, 1] on `output_device` (default the CPU; a bare
    device type such as "cuda" means the compute device when it is of that type). Any H and W
    work, 1 x 1 included. C = 3 (RGB), 4 (RGBA), 1 (gray: run as RGB with the value in all
    three channels; the result is the mean of the three outputs) or 2 (gray + alpha).

    tile_size: side of a tile's core in input pixels (context comes on top); 0 = automatic: the
        whole frame when it fits the device's free memory, else the largest tile that does. Odd
        sizes are rounded down to even; other than 0 it must be at least 32. Results are
        identical either way: tiles carry enough real context that no seams exist.
    precision: "auto" (fp16 on CUDA, else fp32), "fp32", "fp16" or "bf16" (warned: ~18 dB worse).
    device: "auto" (CUDA, then MPS, then CPU), a device string or a torch.device.
    alpha: RGBA and gray + alpha only. "model": the alpha plane is upscaled by the network too
        (as gray), keeping the exact value wherever the source alpha is locally constant (opaque
        stays opaque); "bicubic": bicubic interpolation, clamped; "discard": no alpha in C'.
    progress: called as progress(done, total) after every tile; total counts every tile of the
        batch (alpha passes included) and grows only if running out of memory forces smaller
        tiles.
    cancel: polled before every tile; a truthy answer raises UpscaleCancelled.

    Out of memory, the tile is halved (down to 32) and the run resumes at the tile that failed;
    finished tiles are kept. Raises UpscaleOutOfMemory when even that fails.
    """
    batch, height, width, channels = _check(model, image, tile_size, alpha)
    device = resolve_device(device)
    dtype = resolve_dtype(precision, device)
    output_device = resolve_output_device(output_device, device)
    scale = model.scale
    colours, keep_alpha, passes = _layout(channels, alpha)
    out_channels = colours + keep_alpha
    tiler = make_tiler(
        model,
        (height, width),
        dtype,
        device,
        tile_size=tile_size,
        output_device=output_device,
        output_bytes=_output_bytes(model, image.shape, alpha, output_device, device),
        passes=passes * batch,
        progress=progress,
        cancel=cancel,
    )
    output = torch.empty(
        batch, scale * height, scale * width, out_channels, device=output_device
    )
    # Tiles land straight in the result when it is in the compute dtype on the compute device.
    direct = dtype == torch.float32 and output_device == device and colours == 3
    with torch.inference_mode():
        for index in range(batch):
            pixels = image[index].permute(2, 0, 1).unsqueeze(0)
            colour = pixels[:, :1].expand(-1, 3, -1, -1) if colours == 1 else pixels[:, :3]
            if direct:
                tiler.run(network_input(colour, device, dtype), target=output[index, ..., :3])
            else:
                rgb = tiler.run(network_input(colour, device, dtype))
                rgb = rgb[: scale * height, : scale * width]
                if colours == 1:
                    output[index, ..., :1].copy_(rgb.float().mean(-1, keepdim=True))
                else:
                    output[index, ..., :3].copy_(rgb)
            if not keep_alpha:
                continue
            plane = pixels[:, colours:]
            if alpha == "model":
                upscaled = tiler.run(network_input(plane.expand(-1, 3, -1, -1), device, dtype))
                upscaled = upscaled[: scale * height, : scale * width].float().mean(-1)
                # Where the canvas is: the compute device, or the output device when the compute
                # device was short of memory.
                upscaled = _keep_constant_alpha(
                    plane.to(upscaled.device, torch.float32), upscaled, scale
                )
            else:
                upscaled = F.interpolate(
                    plane.to(device=device, dtype=torch.float32),
                    size=(scale * height, scale * width),
                    mode="bicubic",
                    align_corners=False,
                )[0, 0].clamp_(0, 1)
            output[index, ..., colours].copy_(upscaled)
    return output


def memory_needed(
    model,
    image: torch.Tensor,
    *,
    precision: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    alpha: str = "model",
    output_device: str | torch.device | None = None,
) -> int:
    """Free memory on the compute device with which upscale() with these arguments takes the
    image in one tile per plane, its canvas on the device, plus a margin for cuDNN and the
    allocator: what to ask a memory manager (ComfyUI's) to free before upscaling."""
    _batch, height, width, _channels = _check(model, image, 0, alpha)
    device = resolve_device(device)
    dtype = resolve_dtype(precision, device)
    output_device = resolve_output_device(output_device, device)
    padded = (height + height % 2, width + width % 2)
    output_bytes = _output_bytes(model, image.shape, alpha, output_device, device)
    return whole_frame_bytes(model, padded, dtype, output_bytes)


def _layout(channels: int, alpha: str) -> tuple[int, bool, int]:
    """(colour channels, whether an alpha channel is output, network passes per image)."""
    colours, has_alpha = (1, channels == 2) if channels <= 2 else (3, channels == 4)
    passes = 2 if has_alpha and alpha == "model" else 1
    return colours, has_alpha and alpha != "discard", passes


def _output_bytes(model, shape, alpha: str, output_device, device) -> int:
    """What the result takes on the compute device: nothing when it goes elsewhere."""
    if output_device != device:
        return 0
    batch, height, width, channels = shape
    colours, keep_alpha, _passes = _layout(channels, alpha)
    return batch * model.scale**2 * height * width * (colours + keep_alpha) * 4


def _keep_constant_alpha(plane: torch.Tensor, upscaled: torch.Tensor, scale: int) -> torch.Tensor:
    """The network's alpha, except where the source alpha is constant over a pixel's 3 x 3
    neighbourhood: there the exact value is kept. The network does not reproduce a flat plane
    exactly (its zero padding darkens the image border by up to 4%), which would give opaque
    sprites a translucent rim and transparent areas faint coverage."""
    low = -F.max_pool2d(-plane, 3, stride=1, padding=1)
    high = F.max_pool2d(plane, 3, stride=1, padding=1)
    flat = (low == high)[0, 0].repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    value = plane[0, 0].repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return torch.where(flat, value, upscaled)


def _check(model, image: torch.Tensor, tile_size: int, alpha: str) -> tuple[int, int, int, int]:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or not image.is_floating_point():
        raise ValueError("image must be a B x H x W x C float tensor (a ComfyUI IMAGE)")
    if image.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"image must have 1 to 4 channels (gray, gray + alpha, RGB, RGBA), got {image.shape[-1]}")
    if model.in_channels != 3:
        raise ValueError(f"only RGB models are supported, this one takes {model.in_channels}")
    if not isinstance(tile_size, numbers.Integral) or isinstance(tile_size, bool):
        raise TypeError(f"tile_size must be a whole number (0 = automatic), got {tile_size!r}")
    if tile_size != 0 and tile_size < MIN_TILE:
        raise ValueError(f"tile_size must be 0 (automatic) or at least {MIN_TILE}")
    if alpha not in ALPHA_MODES:
        raise ValueError(f"alpha must be one of {', '.join(ALPHA_MODES)}, got {alpha!r}")
    return tuple(image.shape)


def network_input(pixels: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """1 x 3 x H x W on the device, in the compute dtype, channels_last, padded to even.

    Only the missing row/column is added, at the bottom/right, so the result is exactly the
    network's output on that padded image, cropped. Replicate, not reflect: reflect cannot pad
    a 1-pixel-wide image, and repeating the edge pixel is the usual upscaler convention.
    """
    pixels = pixels.to(device=device, dtype=dtype)
    height, width = pixels.shape[-2:]
    if height % 2 or width % 2:
        pixels = F.pad(pixels, (0, width % 2, 0, height % 2), mode="replicate")
    return pixels.contiguous(memory_format=torch.channels_last)


def make_tiler(
    model,
    size: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
    *,
    tile_size: int = 0,
    output_device: torch.device | None = None,
    output_bytes: int = 0,
    passes: int = 1,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> Tiler:
    """The runner for `passes` planes of `size` (height, width; padded to even here) through
    the cached prepared copy of `model`. `output_bytes`: what the caller keeps on `device`."""
    padded = (size[0] + size[0] % 2, size[1] + size[1] % 2)
    return Tiler(
        accelerated(model, device, dtype),
        model,
        context_for(model),
        padded,
        dtype,
        device,
        output_device or torch.device("cpu"),
        output_bytes,
        even_tile(tile_size),
        passes,
        progress,
        cancel,
    )


class Tiler:
    """Runs the network tile by tile over one padded image plane at a time, into one canvas.

    The canvas (the upscaled plane, H x W x 3 in the compute dtype) lives on the compute device
    so tiles never round-trip to the host; only when it would take too much of the device's
    memory (huge panoramas) is it kept on the output device instead.
    """

    def __init__(
        self,
        net,
        model,
        context: int,
        padded: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
        output_device: torch.device,
        output_bytes: int,
        tile_size: int,
        passes: int,
        progress: Progress | None,
        cancel: Cancel | None,
    ) -> None:
        self.net, self.scale, self.context, self.device = net, model.scale, context, device
        self.height, self.width = padded
        self.progress, self.cancel = progress, cancel
        on_device, budget = plan_memory(model, padded, dtype, free_memory(device), output_bytes)
        canvas_device = device if on_device else output_device
        self.canvas_spec = dict(
            size=(self.scale * self.height, self.scale * self.width, 3),
            dtype=dtype,
            device=canvas_device,
        )
        self.canvas: torch.Tensor | None = None  # made on first use: direct runs need none
        self.tile = tile_size or auto_tile(
            self.height, self.width, context, bytes_per_pixel(model, dtype), budget
        )
        self.full = Box(0, 0, self.height, self.width)
        self.passes_left = passes
        self.done = 0
        self.total = passes * len(split(self.full, self.tile))

    def run(self, source: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Upscale `source` (1 x 3 x H x W, padded) into `target` (an sH' x sW' x 3 view no
        larger than the upscaled padded plane; cropped to it), or else into the canvas (the whole
        upscaled padded plane). Returns what was written, clamped to [0, 1]."""
        if target is None:
            if self.canvas is None:
                self.canvas = torch.empty(**self.canvas_spec)
            target = self.canvas
        self.passes_left -= 1
        pending = deque(split(self.full, self.tile))
        while pending:
            if self.cancel is not None and self.cancel():
                raise UpscaleCancelled("upscale cancelled")
            tile = window(pending[0], self.height, self.width, self.context)
            try:
                self._run_tile(source, tile, target)
                out_of_memory = False
            except RuntimeError as error:
                if not is_out_of_memory(error, self.device):
                    raise
                self._shrink(error)
                out_of_memory = True
            if out_of_memory:
                # Outside the except block, so the failed pass's tensors are already released.
                # The CUDA graphs go too: their memory pool is sized for the old tiles' windows.
                self.net.release()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                pending = deque(box for core in pending for box in split(core, self.tile))
                self.total = self.done + len(pending) + self.passes_left * len(
                    split(self.full, self.tile)
                )
                continue
            pending.popleft()
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total)
        return target

    def _run_tile(self, source: torch.Tensor, tile: Tile, target: torch.Tensor) -> None:
        """Run the tile's window; write its core into `target` (cropped to it), clamped.

        The net's result may be a CUDA graph's output buffer, which the net's next call (from
        any thread) overwrites: it is written out under the net's lock, before any other call.
        """
        area, core = tile.window, tile.core
        top, left = core.top * self.scale, core.left * self.scale
        bottom = min(core.bottom * self.scale, target.shape[0])
        right = min(core.right * self.scale, target.shape[1])
        # The network's output grid has one block of 2 * scale pixels per 2 x 2 input pixels;
        # windows and cores start on even pixels.
        first_row, first_col = (core.top - area.top) // 2, (core.left - area.left) // 2
        with self.net.lock:
            result = self.net(source[:, :, area.top : area.bottom, area.left : area.right])
            if bottom > top and right > left:
                factor = 2 * self.scale
                blocks = result[0, :, first_row:, first_col:].permute(1, 2, 0)
                write_blocks(
                    blocks.unflatten(-1, (factor, factor, 3)), target[top:bottom, left:right]
                )

    def _shrink(self, error: RuntimeError) -> None:
        """Halve the tile after an out-of-memory error, or give up below MIN_TILE."""
        if self.tile <= MIN_TILE:
            # The device's own words (first line, capped): cuDNN and cuBLAS name no "memory".
            reason = (str(error).strip().split("\n") or [""])[0][:200]
            raise UpscaleOutOfMemory(
                f"out of memory on {self.device} even with {self.tile}-px tiles ({reason}); "
                "free memory on the device, use fp16, or run on another device"
            ) from error
        self.tile = max(even_tile(self.tile // 2), MIN_TILE)
