"""Headless stand-ins for ComfyUI's core image nodes, with ComfyUI's names, inputs, outputs and
pixels: LoadImage, SaveImage, PreviewImage, ImageScale, ImageScaleBy, JoinImageWithAlpha.

Written from ComfyUI's behaviour (nodes.py, comfy/utils.py, folder_paths.py); only folders and
file safety differ: every file read stays in the input folder and every file written in the
output (or preview) folder, symlinks resolved.
"""

from __future__ import annotations

import itertools
import logging
import mimetypes
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, ImageSequence, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from ..host import bridge
from ..files.paths import UnsafePathError, brief, inside, name_problem, write_first_free
from ..nodes.batch import png_text

log = logging.getLogger(__name__)
MAX_RESOLUTION = 16384
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]
# Where PreviewImage writes headless, inside the output folder so that a run writes nothing
# outside it; ComfyUI uses its temp folder, emptied at start-up, and the runner empties this
# one at the start of each run.
PREVIEW_FOLDER = ".preview"


def input_files(kind: str = "image") -> list[str]:
    """Files of `kind` (image, video) directly in the input folder, by their name's MIME type,
    as LoadImage's and LoadVideo's lists show them."""
    folder = bridge.directory("input")
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_file()]
    return sorted(n for n in names if (mimetypes.guess_type(n, strict=False)[0] or "").startswith(kind + "/"))


def annotated_path(name: str) -> Path:
    """ComfyUI's "name [input]", "name [output]" and "name [temp]" (one annotation, at the end);
    plain names are in the input folder. Raises UnsafePathError for names that lead out of
    that folder."""
    for kind in ("input", "output", "temp"):
        if name.endswith(f" [{kind}]"):
            folder = preview_dir() if kind == "temp" else bridge.directory(kind)
            return inside(folder, name[: -len(kind) - 3])
    return inside(bridge.directory("input"), name)


def preview_dir() -> Path:
    return inside(bridge.directory("output"), PREVIEW_FOLDER)


def clear_previews() -> None:
    """Empty the preview folder: previews last one run, as ComfyUI's temp files last one session."""
    shutil.rmtree(preview_dir(), ignore_errors=True)


def _pillow(fn, arg):
    """Retry with truncated images allowed, as ComfyUI's node_helpers.pillow does."""
    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def pil_to_image_and_mask(img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """LoadImage's decoding of every frame: IMAGE (B x H x W x 3) and MASK (1 - alpha)."""
    images, masks, size = [], [], None
    for frame in ImageSequence.Iterator(img):
        frame = _pillow(ImageOps.exif_transpose, frame)
        if frame.mode == "I":
            frame = frame.point(lambda v: v * (1 / 255))
        rgb = frame.convert("RGB")
        size = size or rgb.size
        if rgb.size != size:
            continue
        images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None,])
        if "A" in frame.getbands():
            alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
            mask = 1.0 - torch.from_numpy(alpha)
        elif frame.mode == "P" and "transparency" in frame.info:
            alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
            mask = 1.0 - torch.from_numpy(alpha)
        else:
            mask = torch.zeros((64, 64), dtype=torch.float32)
        masks.append(mask.unsqueeze(0))
    if len(images) > 1 and img.format != "MPO":
        return torch.cat(images, dim=0), torch.cat(masks, dim=0)
    return images[0], masks[0]


class LoadImage:
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (input_files(), {"image_upload": True})}}

    def load_image(self, image):
        path = annotated_path(image)
        try:
            with _pillow(Image.open, path) as img:
                if img.mode in ("I", "I;16", "I;16B", "I;16L"):
                    log.warning(
                        "Load Image: %s is 16-bit grayscale, which ComfyUI's Load Image (and so this "
                        "copy of it) reads almost white: it divides by 255 and clips. Load Image "
                        "Folder (RT4KSR) reads it right; or save the image as 8-bit or RGB.", image)
                return pil_to_image_and_mask(img)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise ValueError(f"{image}: cannot read image: {error}") from error

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        try:
            exists = annotated_path(image).is_file()
        except UnsafePathError as error:
            return str(error)
        return True if exists else f"Invalid image file: {brief(image)} (no such file in {annotated_path(image).parent})"


def save_image_path(prefix: str, output_dir: Path, width: int, height: int):
    """folder_paths.get_save_image_path: (folder, filename, counter, subfolder, prefix).

    Tokens %width% %height% %year% %month% %day% %hour% %minute% %second% are filled in; the
    counter continues after the highest `{filename}_NNNNN_` already in the folder.
    """
    if "%" in prefix:
        now = time.localtime()
        tokens = {"width": width, "height": height, "year": now.tm_year}
        tokens.update({k: f"{getattr(now, 'tm_' + a):02}" for k, a in
                       [("month", "mon"), ("day", "mday"), ("hour", "hour"), ("minute", "min"), ("second", "sec")]})
        for key, value in tokens.items():
            prefix = prefix.replace(f"%{key}%", str(value))
    normal = os.path.normpath(prefix)
    subfolder, filename = os.path.dirname(normal), os.path.basename(normal)
    folder = inside(output_dir, subfolder) if subfolder else output_dir.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    counters = [0]
    for name in os.listdir(folder):
        head = name[: len(filename) + 1]
        if os.path.normcase(head[:-1]) == os.path.normcase(filename) and head[-1:] == "_":
            try:
                counters.append(int(name[len(filename) + 1 :].split("_")[0]))
            except ValueError:
                counters.append(0)
    return folder, filename, max(counters) + 1, subfolder, prefix


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """SaveImage's quantisation: scale by 255, clip, truncate (not round)."""
    return np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)


def png_metadata(prompt, extra_pnginfo) -> PngInfo | None:
    """batch.png_text as Pillow's PngInfo, for Image.save."""
    text = png_text(prompt, extra_pnginfo)
    if text is None:
        return None
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    return info


class SaveImage:
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your ComfyUI output directory."
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    kind, prefix_append, compress_level = "output", "", 4

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "filename_prefix": ("STRING", {"default": "ComfyUI"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def folder(self) -> Path:
        return bridge.directory("output")

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        """A prefix leading out of the output folder is refused before anything runs (ComfyUI
        finds out only when saving)."""
        if filename_prefix is None:
            return True
        subfolder = os.path.dirname(os.path.normpath(filename_prefix))
        try:
            inside(bridge.directory("output"), subfolder or ".")
        except UnsafePathError as error:
            return str(error)
        # The longest name the counter gives (the date tokens only get shorter).
        longest = filename_prefix.replace("%batch_num%", "9999") + "_99999_.png"
        return name_problem(longest) or True

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        filename_prefix += self.prefix_append
        folder, filename, counter, subfolder, _ = save_image_path(
            filename_prefix, self.folder(), images[0].shape[1], images[0].shape[0]
        )
        results, metadata = [], png_metadata(prompt, extra_pnginfo)
        for batch_number, image in enumerate(images):
            stem = filename.replace("%batch_num%", str(batch_number))
            img = Image.fromarray(to_uint8(image))
            # The counter is taken by creating the file: runs sharing the folder never take
            # the same name (the next free one is used) and never replace each other's files.
            path = write_first_free(
                (folder / f"{stem}_{number:05}_.png" for number in itertools.count(counter)),
                lambda out: img.save(out, format="PNG", pnginfo=metadata, compress_level=self.compress_level),
            )
            results.append({"filename": path.name, "subfolder": subfolder, "type": self.kind})
            counter = int(path.name[len(stem) + 1:].split("_")[0]) + 1
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    compress_level = 1
    kind = "temp"

    def __init__(self):
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def folder(self) -> Path:
        return preview_dir()


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """comfy.utils.lanczos: through 8-bit PIL images (truncating quantisation)."""
    out = []
    for sample in samples:
        img = Image.fromarray(to_uint8(sample.movedim(0, -1)))
        img = img.resize((width, height), resample=Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.array(img).astype(np.float32) / 255.0).movedim(-1, 0))
    return torch.stack(out).to(samples.device, samples.dtype)


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """comfy.utils.common_upscale for N x C x H x W samples and ImageScale's methods."""
    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    if method == "lanczos":
        return lanczos(samples, width, height)
    return torch.nn.functional.interpolate(samples, size=(height, width), mode=method)


class ImageScale:
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}
        return {"required": {"image": ("IMAGE",), "upscale_method": (UPSCALE_METHODS,),
                             "width": ("INT", dict(size)), "height": ("INT", dict(size)),
                             "crop": (CROP_METHODS,)}}

    def upscale(self, image, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (image,)
        samples = image.movedim(-1, 1)
        if width == 0:
            width = max(1, round(samples.shape[3] * height / samples.shape[2]))
        elif height == 0:
            height = max(1, round(samples.shape[2] * width / samples.shape[3]))
        return (common_upscale(samples, width, height, upscale_method, crop).movedim(1, -1),)


class ImageScaleBy:
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "upscale_method": (UPSCALE_METHODS,),
                             "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01})}}

    def upscale(self, image, upscale_method, scale_by):
        samples = image.movedim(-1, 1)
        # Python's round (half to even), as ComfyUI.
        width, height = round(samples.shape[3] * scale_by), round(samples.shape[2] * scale_by)
        return (common_upscale(samples, width, height, upscale_method, "disabled").movedim(1, -1),)


class JoinImageWithAlpha:
    """An RGBA image from an RGB image and a MASK; LoadImage's MASK is 1 - alpha, so the
    alpha is 1 - mask, resized bilinearly to the image (as ComfyUI's resize_mask)."""

    CATEGORY = "mask/compositing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "join"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "alpha": ("MASK",)}}

    def join(self, image, alpha):
        count = min(len(image), len(alpha))  # ComfyUI pairs them up and drops the rest
        masks = alpha.reshape(-1, 1, alpha.shape[-2], alpha.shape[-1])
        resized = torch.nn.functional.interpolate(masks, size=tuple(image.shape[1:3]), mode="bilinear")
        opacity = 1.0 - resized[:count, 0, :, :, None].to(image)
        return (torch.cat((image[:count, :, :, :3], opacity), dim=-1),)


CORE_NODES = {
    "LoadImage": LoadImage,
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
    "ImageScale": ImageScale,
    "ImageScaleBy": ImageScaleBy,
    "JoinImageWithAlpha": JoinImageWithAlpha,
}
CORE_DISPLAY_NAMES = {
    "LoadImage": "Load Image",
    "SaveImage": "Save Image",
    "PreviewImage": "Preview Image",
    "ImageScale": "Upscale Image",
    "ImageScaleBy": "Upscale Image By",
    "JoinImageWithAlpha": "Join Image with Alpha",
}
