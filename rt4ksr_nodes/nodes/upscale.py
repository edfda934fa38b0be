"""Upscale Image (RT4KSR) and Upscale Image to Size (RT4KSR): thin adapters over the engine."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..host import bridge
from ..engine import memory_needed, upscale
from ..engine.device import resolve_device, resolve_dtype
from .common import CATEGORY, check_tile, model_input, precision_input, tile_input
from .to_size import placement, plan

PRESETS = {"3840x2160 (UHD 4K)": (3840, 2160), "4096x2160 (DCI 4K)": (4096, 2160)}
CUSTOM = "custom"
ASPECT_MODES = ["crop", "fit"]


def compute_device() -> torch.device:
    return resolve_device(bridge.torch_device())


def run_engine(model, image: torch.Tensor, tile_size: int, precision: str, *,
               output_device=None, progress=None):
    """The engine with ComfyUI's device, memory management, progress bar and interrupts.

    The result goes to `output_device`, by default ComfyUI's intermediate device. `progress`:
    a progress(done, total) callback; by default a progress bar of its own.
    """
    device = compute_device()
    output_device = bridge.intermediate_device() if output_device is None else output_device
    with warnings.catch_warnings():  # the engine itself warns about bf16, once
        warnings.simplefilter("ignore")
        # What the run will hold on the device, so that ComfyUI unloads enough for it.
        needed = memory_needed(
            model, image, precision=precision, device=device, output_device=output_device
        )
    bridge.free_memory(needed, device)
    return upscale(
        model,
        image,
        tile_size=tile_size,
        precision=precision,
        device=device,
        progress=bridge.progress() if progress is None else progress,
        cancel=bridge.interrupted,
        output_device=output_device,
    )


def _mask_as_alpha(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor | None:
    """ComfyUI's MASK (1 - alpha, B x H x W) as an alpha channel matching `image`, or None for
    an all-zero mask (opaque; also LoadImage's 64 x 64 placeholder), which needs no alpha pass."""
    mask = mask.reshape(-1, *mask.shape[-2:]).to(image.device, torch.float32)
    if not mask.any():
        return None
    if tuple(mask.shape[-2:]) != tuple(image.shape[1:3]):
        raise ValueError(
            f"mask is {mask.shape[-1]}x{mask.shape[-2]} but image is "
            f"{image.shape[2]}x{image.shape[1]}; they must match"
        )
    if mask.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"mask batch {mask.shape[0]} does not match image batch {image.shape[0]}")
    return (1.0 - mask).expand(image.shape[0], -1, -1).unsqueeze(-1)


class RT4KSRUpscale:
    DESCRIPTION = (
        "Upscales images by the model's factor (x2: 1080p to 4K, x3: 720p to 4K), any size, "
        "tiled when memory requires it with pixel-identical results. A mask is upscaled "
        "alongside, by the model."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("IMAGE", "MASK")
    OUTPUT_TOOLTIPS = ("The upscaled images.", "The upscaled mask (zeros when none was given).")
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": model_input(),
                "image": ("IMAGE", {"tooltip": "Images to upscale."}),
                "tile_size": tile_input(),
                "precision": precision_input(),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional mask (e.g. from Load Image's alpha), "
                                             "upscaled with the image."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, tile_size=None):
        return check_tile(tile_size)

    def upscale(self, model, image, tile_size, precision, mask=None):
        alpha = None if mask is None else _mask_as_alpha(mask, image)
        rgb = image[..., :3]
        if alpha is None:
            result = run_engine(model, rgb, tile_size, precision)
            out_mask = torch.zeros(result.shape[:3], device=result.device)
            return (result, out_mask)
        result = run_engine(model, torch.cat([rgb, alpha], dim=-1), tile_size, precision)
        return (result[..., :3].contiguous(), 1.0 - result[..., 3])


def target_size(preset: str, width: int, height: int) -> tuple[int, int]:
    return PRESETS[preset] if preset in PRESETS else (width, height)


def resample(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x H x W x 3 to `size` (w, h): bicubic, antialiased when shrinking, clamped."""
    pixels = image.movedim(-1, 1)
    antialias = size[0] < pixels.shape[-1] or size[1] < pixels.shape[-2]
    pixels = F.interpolate(pixels, size=size[::-1], mode="bicubic", antialias=antialias,
                           align_corners=False).clamp_(0, 1)
    return pixels.movedim(1, -1)


def pass_progress(weights: list[int]) -> list:
    """One progress bar for several engine runs: a progress(done, total) callback per run,
    each run's share of the bar in proportion to its weight (its input pixels)."""
    report = bridge.progress()
    if report is None:
        return [None] * len(weights)
    total, steps = sum(weights), 1000
    parts, offset = [], 0
    for weight in weights:
        parts.append(lambda done, count, offset=offset, weight=weight: report(
            round(steps * (offset + weight * done / count) / total), steps))
        offset += weight
    return parts


class RT4KSRUpscaleToSize:
    DESCRIPTION = (
        "Brings images, e.g. a generation, to an exact size such as UHD 4K: as many RT4KSR "
        "passes as needed, then a high-quality (antialiased bicubic) resample to the target, "
        "keeping the aspect ratio by cropping or by fitting with black bars."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("Images of exactly the target size.",)
    FUNCTION = "upscale_to_size"

    @classmethod
    def INPUT_TYPES(cls):
        size = {"min": 16, "max": 16384, "step": 8}
        return {
            "required": {
                "model": model_input(),
                "image": ("IMAGE", {"tooltip": "Images to bring to the target size."}),
                "preset": (
                    [*PRESETS, CUSTOM],
                    {"default": next(iter(PRESETS)), "tooltip": "Target size; custom uses "
                     "width and height below."},
                ),
                "width": ("INT", {"default": 3840, **size, "tooltip": "Target width (custom)."}),
                "height": ("INT", {"default": 2160, **size, "tooltip": "Target height (custom)."}),
                "aspect": (
                    ASPECT_MODES,
                    {"default": "crop", "tooltip": "crop: fill the target and trim the "
                     "overflow evenly; fit: show the whole image, padded with black bars."},
                ),
                "tile_size": tile_input(),
                "precision": precision_input(),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, tile_size=None):
        return check_tile(tile_size)

    def upscale_to_size(self, model, image, preset, width, height, aspect, tile_size, precision):
        target = target_size(preset, width, height)
        steps = plan((image.shape[2], image.shape[1]), target, aspect, model.scale)
        device = compute_device()
        with warnings.catch_warnings():  # the engine itself warns about bf16, once
            warnings.simplefilter("ignore")
            dtype = resolve_dtype(precision, device)
        keep = placement(steps, image.shape[0], dtype, device)  # refuses before any work
        left, top, w, h = steps.region
        image = image[:, top : top + h, left : left + w, :3].float()
        inputs = steps.pass_inputs()
        for size, progress in zip(inputs, pass_progress([w * h for w, h in inputs])):
            if (image.shape[2], image.shape[1]) != size:
                image = resample(image.to(keep), size)
            image = run_engine(model, image, tile_size, precision, output_device=keep,
                               progress=progress)
        image = image.to(keep)
        if (image.shape[2], image.shape[1]) != steps.scaled:
            image = resample(image, steps.scaled)
        (w, h), (tw, th) = steps.scaled, target
        left, top = (w - tw) // 2, (h - th) // 2
        if aspect == "crop":
            image = image[:, top : top + th, left : left + tw]
        else:
            image = F.pad(image, (0, 0, -left, tw - w + left, -top, th - h + top))
        return (image.contiguous().to(bridge.intermediate_device()),)
