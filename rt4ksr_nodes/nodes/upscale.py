"""Upscale Image (RT4KSR) and Upscale Image to Size (RT4KSR): thin adapters over the engine."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from .. import comfy_bridge as bridge
from ..engine import upscale
from ..engine.device import resolve_device, resolve_dtype
from ..engine.memory import bytes_per_pixel
from .common import CATEGORY, check_tile, model_input, precision_input, tile_input

PRESETS = {"3840x2160 (UHD 4K)": (3840, 2160), "4096x2160 (DCI 4K)": (4096, 2160)}
CUSTOM = "custom"
ASPECT_MODES = ["crop", "fit"]


def engine_device(model, precision: str, height: int, width: int):
    """ComfyUI's compute device, with room made there for a height x width input."""
    device = resolve_device(bridge.torch_device())
    with warnings.catch_warnings():  # the engine itself warns about bf16, once
        warnings.simplefilter("ignore")
        dtype = resolve_dtype(precision, device)
    bridge.free_memory(int(bytes_per_pixel(model, dtype) * height * width), device)
    return device


def run_engine(model, image: torch.Tensor, tile_size: int, precision: str, *, last: bool = True):
    """The engine with ComfyUI's device, memory management, progress bar and interrupts.

    The result goes to ComfyUI's intermediate device when `last`, else it stays on the compute
    device for the next step.
    """
    device = engine_device(model, precision, *image.shape[1:3])
    return upscale(
        model,
        image,
        tile_size=tile_size,
        precision=precision,
        device=device,
        progress=bridge.progress(),
        cancel=bridge.interrupted,
        output_device=bridge.intermediate_device() if last else device,
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


def plan(source: tuple[int, int], target: tuple[int, int], aspect: str, scale: int):
    """(model passes, resampled width and height) to reach `target` from `source` (w, h).

    "crop" covers the target and trims the overflow evenly; "fit" fits inside it and pads.
    """
    (w, h), (tw, th) = source, target
    factor = max(tw / w, th / h) if aspect == "crop" else min(tw / w, th / h)
    passes = max(0, math.ceil(math.log(factor, scale) - 1e-9))
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if aspect == "crop":
        size = (max(size[0], tw), max(size[1], th))
    else:
        size = (min(size[0], tw), min(size[1], th))
    return passes, size


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
        passes, (w, h) = plan((image.shape[2], image.shape[1]), target, aspect, model.scale)
        for _ in range(passes):
            image = run_engine(model, image[..., :3], tile_size, precision, last=False)
        pixels = image[..., :3].movedim(-1, 1).float()
        if (pixels.shape[-1], pixels.shape[-2]) != (w, h):
            antialias = w < pixels.shape[-1] or h < pixels.shape[-2]
            pixels = F.interpolate(pixels, size=(h, w), mode="bicubic", antialias=antialias,
                                   align_corners=False).clamp_(0, 1)
        tw, th = target
        left, top = (w - tw) // 2, (h - th) // 2
        if aspect == "crop":
            pixels = pixels[..., top : top + th, left : left + tw]
        else:
            pixels = F.pad(pixels, (-left, tw - w + left, -top, th - h + top))
        return (pixels.movedim(1, -1).contiguous().to(bridge.intermediate_device()),)
