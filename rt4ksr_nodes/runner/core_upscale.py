"""Headless stand-ins for ComfyUI's core Load Upscale Model and Upscale Image (using Model), with
the server's pixels: the same tiles (512 px, 32 px overlap, halved on out-of-memory down to
128), the same feathered blend, clamp and device path (comfy_extras/nodes_upscale_model.py and
comfy/utils.py tiled_scale, rewritten here).

With spandrel installed (pip install 'rt4ksr-nodes[spandrel]') any architecture it knows loads,
RT4KSR included (registered by the pack). Without it, RT4KSR files load through the pack's own
model, run as spandrel runs it: odd sizes padded to even (reflect), output clamped and cropped.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..host import bridge
from .. import nodes
from ..engine import UpscaleCancelled
from ..engine.device import resolve_device
from ..files.paths import UnsafePathError, inside
from ..model.checkpoint import CheckpointError, fused_from_state_dict, looks_like_rt4ksr, read_state_dict

# The file kinds ComfyUI lists in models/upscale_models/ (folder_paths.supported_pt_extensions).
EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
TILE, OVERLAP, MIN_TILE = 512, 32, 128
SPANDREL_EXTRA = "pip install 'rt4ksr-nodes[spandrel]'"
# Which exception means out of memory (ComfyUI's model_management.OOM_EXCEPTION).
OOM = getattr(torch.cuda, "OutOfMemoryError", torch.OutOfMemoryError)


def upscale_model_files() -> list[str]:
    """The files in the upscale_models folders, as ComfyUI lists them (relative, "/")."""
    names = set()
    for folder in bridge.model_folders(bridge.UPSCALE_FOLDER):
        for root, _, files in os.walk(folder, followlinks=True):
            names.update(
                os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
                for f in files
                if os.path.splitext(f)[1].lower() in EXTENSIONS
            )
    return sorted(names)


def upscale_model_path(name: str):
    for folder in bridge.model_folders(bridge.UPSCALE_FOLDER):
        path = inside(folder, name)  # refuses ../ and absolute names
        if path.is_file():
            return path
    raise FileNotFoundError(f"upscale model {name!r} not found in {bridge.UPSCALE_FOLDER}/")


class RT4KSRUpscaleModel:
    """An RT4KSR model called as spandrel's image-model descriptor calls a model."""

    def __init__(self, model) -> None:
        self.model, self.scale = model, model.scale

    def to(self, device):
        self.model.to(device)
        return self

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        pad_w, pad_h = width % 2, height % 2
        if pad_w or pad_h:
            # reflect can pad at most size - 1; the rest (a 1-px side) replicates
            reflect_w, reflect_h = min(pad_w, width - 1), min(pad_h, height - 1)
            image = F.pad(image, (0, reflect_w, 0, reflect_h), "reflect")
            image = F.pad(image, (0, pad_w - reflect_w, 0, pad_h - reflect_h), "replicate")
        output = self.model(image).clamp_(0, 1)
        if pad_w or pad_h:
            output = output[..., : height * self.scale, : width * self.scale]
        return output


def _parameter_bytes(module: torch.nn.Module) -> int:
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


class UpscaleModelLoader:
    CATEGORY = "loaders"
    RETURN_TYPES = ("UPSCALE_MODEL",)
    FUNCTION = "load_model"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_name": (upscale_model_files(),)}}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        if model_name is None:
            return True
        listed = upscale_model_files()
        if model_name not in listed:
            folders = ", ".join(str(f) for f in bridge.model_folders(bridge.UPSCALE_FOLDER)) or "none (use --models-dir)"
            return f"{model_name!r} is not in the upscale models folders ({folders}); found: {listed}"
        try:
            path = upscale_model_path(model_name)
        except (UnsafePathError, FileNotFoundError) as error:
            return str(error)
        if not looks_like_rt4ksr(path) and not nodes.register_with_spandrel():
            return (f"{model_name} is not an RT4KSR model; other architectures load through spandrel, "
                    f"which is not installed: {SPANDREL_EXTRA}")
        return True

    def load_model(self, model_name):
        path = upscale_model_path(model_name)
        state = read_state_dict(path)
        if nodes.register_with_spandrel():
            from spandrel import ImageModelDescriptor, ModelLoader

            model = ModelLoader().load_from_state_dict(state).eval()
            if not isinstance(model, ImageModelDescriptor):
                raise ValueError(f"{model_name}: an upscale model must be a single-image model")
            return (model,)
        try:
            return (RT4KSRUpscaleModel(fused_from_state_dict(state, path)),)
        except CheckpointError as error:
            raise CheckpointError(f"{error}. Other architectures need spandrel: {SPANDREL_EXTRA}") from None


class ImageUpscaleWithModel:
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"upscale_model": ("UPSCALE_MODEL",), "image": ("IMAGE",)}}

    def upscale(self, upscale_model, image):
        device = resolve_device(bridge.torch_device())
        scale = upscale_model.scale
        required = _parameter_bytes(upscale_model.model)
        required += (512 * 512 * 3) * image.element_size() * max(scale, 1.0) * 384.0
        required += image.nelement() * image.element_size()
        bridge.free_memory(required, device)
        upscale_model.to(device)
        samples = image.movedim(-1, -3).to(device)
        tile = TILE
        while True:
            try:
                result = tiled_scale(samples, upscale_model, tile, OVERLAP, scale, bridge.progress())
                break
            except OOM:
                tile //= 2
                if tile < MIN_TILE:
                    raise
        upscale_model.to("cpu")
        return (torch.clamp(result.movedim(-3, -1), min=0, max=1.0),)


def tile_steps(width: int, height: int, tile: int, overlap: int) -> int:
    rows = 1 if height <= tile else -(-(height - overlap) // (tile - overlap))
    cols = 1 if width <= tile else -(-(width - overlap) // (tile - overlap))
    return rows * cols


def _feather(result: torch.Tensor, width: int) -> torch.Tensor:
    """Weights rising linearly over `width` px from each edge (both edges of each spatial axis,
    multiplied where they meet), computed in ComfyUI's order so the blend is bit-identical."""
    mask = torch.ones_like(result)
    for axis in (2, 3):
        size = mask.shape[axis]
        if width >= size:
            continue
        for t in range(width):
            weight = (t + 1) / width
            mask.narrow(axis, t, 1).mul_(weight)
            mask.narrow(axis, size - 1 - t, 1).mul_(weight)
    return mask


@torch.inference_mode()
def tiled_scale(samples, function, tile: int, overlap: int, scale, progress=None) -> torch.Tensor:
    """`function` over overlapping tile x tile pieces of each N x C x H x W sample, blended with
    feathered weights; the result is on the CPU. `progress(done, total)` after each tile; stops
    between tiles on the runner's interrupt."""
    count, channels, height, width = samples.shape
    out_h, out_w = round(height * scale), round(width * scale)
    output = torch.empty((count, 3, out_h, out_w), device="cpu")
    total = count * tile_steps(width, height, tile, overlap)
    done = 0
    masks: dict[tuple, torch.Tensor] = {}  # per tile shape: a handful, each built once

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)
        if bridge.interrupted():
            raise UpscaleCancelled("cancelled between two tiles")

    for index in range(count):
        sample = samples[index : index + 1]
        if height <= tile and width <= tile:
            output[index : index + 1] = function(sample).to("cpu")
            step()
            continue
        total_sum = torch.zeros((1, 3, out_h, out_w), device="cpu")
        weight_sum = torch.zeros((1, 3, out_h, out_w), device="cpu")
        rows = range(0, height - overlap, tile - overlap) if height > tile else [0]
        cols = range(0, width - overlap, tile - overlap) if width > tile else [0]
        for row in rows:
            for col in cols:
                top = max(0, min(height - overlap, row))
                left = max(0, min(width - overlap, col))
                piece = sample.narrow(2, top, min(tile, height - top)).narrow(3, left, min(tile, width - left))
                result = function(piece).to("cpu")
                shape = tuple(result.shape)
                if shape not in masks:
                    masks[shape] = _feather(result, round(overlap * scale))
                mask = masks[shape]
                region = (slice(None), slice(None), slice(round(top * scale), round(top * scale) + mask.shape[2]),
                          slice(round(left * scale), round(left * scale) + mask.shape[3]))
                total_sum[region] += result * mask
                weight_sum[region] += mask
                step()
        output[index : index + 1] = total_sum / weight_sum
    return output


CORE_UPSCALE_NODES = {"UpscaleModelLoader": UpscaleModelLoader, "ImageUpscaleWithModel": ImageUpscaleWithModel}
CORE_UPSCALE_DISPLAY_NAMES = {
    "UpscaleModelLoader": "Load Upscale Model",
    "ImageUpscaleWithModel": "Upscale Image (using Model)",
}
