"""Folder batches: Load Image Folder (RT4KSR) and Save Image Batch (RT4KSR).

Inside ComfyUI the loader returns every image as a list (OUTPUT_IS_LIST), so downstream nodes
run once per image. The headless runner streams instead: it asks `stream_items` for the file
list, decodes ahead with `stream_load` on a worker thread, and runs the graph once per file, so
memory stays bounded whatever the folder size. The saver writes through `WRITER` when the runner
set it (a bounded pool of encoder threads), else inline; every write goes to a temporary file and
is renamed, so a file that exists is complete, which is what the runner's --resume relies on.
"""

from __future__ import annotations

import contextvars
import fnmatch
import hashlib
import importlib.util
import json
import logging
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from .. import comfy_bridge as bridge
from ..fileio import UnsafePathError, inside
from ..imageio import IMAGE_EXTENSIONS, PNG_LEVEL, ImageReadError, Picture, read_image, write_image
from .common import CATEGORY

log = logging.getLogger(__name__)
FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "webp lossless": ".webp", "tiff": ".tif", "exr": ".exr"}
BIT_DEPTHS = ["8", "16", "32"]
# The depths each format stores; 8-bit formats quantise 16-bit requests to 8 bits, as before.
FORMAT_DEPTHS = {"png": ("8", "16"), "tiff": ("8", "16"), "exr": ("16", "32")}
PATH_SLOT = 2  # the loader's output carrying the file's relative path

# Set by the headless runner: submit(job) runs job() on an encoder thread.
WRITER: contextvars.ContextVar = contextvars.ContextVar("rt4ksr_batch_writer", default=None)
# Set by the headless runner when it loads a whole folder at once: skipped(item, error) counts
# an unreadable file as a failed item (inside ComfyUI it is only logged).
SKIPPED: contextvars.ContextVar = contextvars.ContextVar("rt4ksr_batch_skipped", default=None)


def _as_comfy(picture: Picture) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE (1 x H x W x 3) and MASK (1 - alpha; LoadImage's 64 x 64 zeros without alpha)."""
    pixels = picture.pixels
    colour = pixels[..., :1].repeat(3, axis=-1) if pixels.shape[-1] <= 2 else pixels[..., :3]
    image = torch.from_numpy(np.ascontiguousarray(colour, dtype=np.float32))[None]
    if pixels.shape[-1] in (2, 4):
        mask = 1.0 - torch.from_numpy(np.ascontiguousarray(pixels[..., -1], dtype=np.float32))
    else:
        mask = torch.zeros((64, 64), dtype=torch.float32)
    return image, mask[None]


class RT4KSRLoadImageFolder:
    DESCRIPTION = (
        "Loads every image of a folder inside the input folder (PNG, JPEG, WebP, TIFF, BMP; 8 or "
        "16 bits), in sorted order, as a list: the nodes after it run once per image. The path "
        "output carries each file's path relative to the folder, for Save Image Batch."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("IMAGE", "MASK", "path")
    OUTPUT_TOOLTIPS = (
        "Each image, in sorted path order.",
        "Each image's mask (1 - alpha; zeros for opaque images).",
        "Each image's path relative to the folder, for Save Image Batch.",
    )
    OUTPUT_IS_LIST = (True, True, True)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": ("STRING", {"default": "", "tooltip": "Folder inside the input folder; empty = the input folder."}),
                "pattern": ("STRING", {"default": "*", "tooltip": "File name pattern, e.g. *.png or frame_*.tif; with a / it matches the path inside the folder, e.g. sub/*.png."}),
                "recursive": ("BOOLEAN", {"default": False, "tooltip": "Include subfolders."}),
            }
        }

    @classmethod
    def stream_items(cls, folder, pattern, recursive) -> list[str]:
        """Relative paths (POSIX) of the matching images, sorted. A pattern with a '/' is
        matched against the relative path, one without against the file name; hidden files and
        folders are left out, and so are symlinks that lead out of the input folder."""
        root = cls._root(folder)
        if not root.is_dir():
            raise FileNotFoundError(_no_folder(folder))
        pattern = pattern or "*"
        found = root.rglob("*") if recursive else root.iterdir()
        names = []
        for path in found:
            relative = path.relative_to(root).as_posix()
            if (path.suffix.lower() not in IMAGE_EXTENSIONS or any(p.startswith(".") for p in relative.split("/"))
                    or not fnmatch.fnmatch(relative if "/" in pattern else path.name, pattern)):
                continue
            try:
                inside(root, relative)
            except UnsafePathError as error:
                log.warning("Load Image Folder (RT4KSR): skipping %s: %s", path, error)
                continue
            if path.is_file():
                names.append(relative)
        if not names:
            searched = f"{root} and its subfolders" if recursive else f"{root}, not its subfolders"
            raise FileNotFoundError(f"no image in {folder!r} matches {pattern!r} (searched {searched})")
        return sorted(names)

    @classmethod
    def VALIDATE_INPUTS(cls, folder=None):
        """The folder must exist inside the input folder before anything runs; which files
        match is known only when the workflow runs."""
        if folder is None:
            return True
        try:
            root = cls._root(folder)
        except UnsafePathError as error:
            return str(error)
        return True if root.is_dir() else _no_folder(folder)

    @classmethod
    def IS_CHANGED(cls, folder, pattern, recursive) -> str:
        """A hash of each matching file's relative path, size and modification time: ComfyUI
        reruns the loader (instead of reusing its list) when files are added or replaced."""
        root = cls._root(folder)
        digest = hashlib.sha256()
        for item in cls.stream_items(folder, pattern, recursive):
            stat = (root / item).stat()
            digest.update(f"{item}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    @classmethod
    def stream_load(cls, item: str, folder, pattern, recursive) -> tuple:
        """The outputs for one file, each a one-element list."""
        image, mask = _as_comfy(read_image(cls._root(folder) / item))
        return [image], [mask], [item]

    @staticmethod
    def _root(folder: str) -> Path:
        return inside(bridge.directory("input"), folder or ".")

    def load(self, folder, pattern, recursive):
        outputs, failures = ([], [], []), []
        for item in self.stream_items(folder, pattern, recursive):
            try:
                loaded = self.stream_load(item, folder, pattern, recursive)
            except ImageReadError as error:  # one bad file must not sink the others
                log.warning("Load Image Folder (RT4KSR): skipping %s", error)
                failures.append(str(error))
                report = SKIPPED.get()
                if report:
                    report(item, str(error))
                continue
            for collected, value in zip(outputs, loaded):
                collected.extend(value)
        if failures and not outputs[0]:
            raise ImageReadError("no image could be read: " + "; ".join(failures))
        return outputs


def _no_folder(folder: str) -> str:
    return f"image folder {folder!r} does not exist in {bridge.directory('input')}"


class RT4KSRSaveImageBatch:
    DESCRIPTION = (
        "Saves each image under the output folder with its source's relative path and a name "
        "template ({stem}: source name without extension; {ext}, {width}, {height}), as PNG "
        "(8 or 16 bits, at a chosen compression level), JPEG, WebP (lossy or lossless), TIFF "
        "(8 or 16 bits) or OpenEXR (16-bit half or 32-bit float; needs the OpenEXR package). "
        "A mask, when not all zero, is written as alpha."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "path": ("STRING", {"forceInput": True, "tooltip": "Relative source path, from Load Image Folder."}),
                "name_template": ("STRING", {"default": "{stem}--2x", "tooltip": "Output name "
                                  "without extension: {stem}, {ext}, {width}, {height}."}),
                "subfolder": ("STRING", {"default": "", "tooltip": "Folder inside the output folder."}),
                "format": (list(FORMATS), {"default": "png", "tooltip": "File format."}),
                "bit_depth": (BIT_DEPTHS, {"default": "8", "tooltip": "Bits per channel: 8 or 16 "
                              "for PNG and TIFF (JPEG and WebP store 8), 16 (half) or 32 (float) for EXR."}),
                "quality": ("INT", {"default": 95, "min": 1, "max": 100, "tooltip": "JPEG and lossy WebP quality."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional mask, written as alpha."}),
                # Optional, so that workflows saved before it existed keep working.
                "compression": ("INT", {"default": PNG_LEVEL, "min": 0, "max": 9, "tooltip":
                                "PNG compression level, 0 (none) to 9; 4 is ComfyUI's Save Image. "
                                "1 takes less than half as long for files ~15% larger."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    @classmethod
    def targets(cls, path, name_template, subfolder, format, count=1, width=0, height=0) -> list[Path]:
        """Where the images for source `path` go (numbered -0, -1, … for a batch of several)."""
        source = PurePosixPath(path)
        try:
            stem = name_template.format(
                stem=source.stem, ext=source.suffix[1:], width=width, height=height
            )
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"name_template {name_template!r}: {error!r} is not a known field; use {{stem}}, "
                "{ext}, {width} and {height}"
            ) from None
        names = [stem] if count == 1 else [f"{stem}-{i}" for i in range(count)]
        folder = PurePosixPath(subfolder or ".") / source.parent
        return [inside(bridge.directory("output"), str(folder / (n + FORMATS[format]))) for n in names]

    @classmethod
    def VALIDATE_INPUTS(cls, name_template=None, subfolder=None, format=None, bit_depth=None):
        """Refuse names that could never be written, and format/depth pairs that cannot be
        stored, before any image is computed; a dummy source stands in for the paths that come
        from the loader. Linked values (None here) are checked when the images are saved."""
        problem = format_problem(format, bit_depth)
        if problem:
            return problem
        if name_template is None or subfolder is None:
            return True
        try:
            cls.targets("source.png", name_template, subfolder, "png")
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def output_complete(cls, path, name_template, subfolder, format, **_) -> bool:
        """True when this source's output exists (the runner's --resume); only single images
        with names free of {width}/{height} can be known before the image is computed."""
        if "{width}" in name_template or "{height}" in name_template:
            return False
        return all(target.is_file() for target in cls.targets(path, name_template, subfolder, format))

    def save(self, images, path, name_template, subfolder, format, bit_depth, quality, mask=None,
             compression=PNG_LEVEL, prompt=None, extra_pnginfo=None):
        problem = format_problem(format, bit_depth)
        if problem:
            raise ValueError(problem)
        height, width = images.shape[1:3]
        targets = self.targets(path, name_template, subfolder, format, len(images), width, height)
        text = png_text(prompt, extra_pnginfo) if format == "png" else None
        results = []
        written = self._written_in(prompt)
        for index, (image, target) in enumerate(zip(images, targets)):
            if target in written:
                raise ValueError(_collision(path, written[target], target, name_template))
            written[target] = path
            pixels = image.float().cpu().numpy()
            alpha = _alpha(mask, index, pixels.shape[:2], path)
            if alpha is not None:
                pixels = np.concatenate([pixels, alpha[..., None]], axis=-1)
            job = _job(target, Picture(pixels, int(bit_depth)), format, quality, text, compression)
            submit = WRITER.get()
            submit(job) if submit else job()
            relative = target.relative_to(bridge.directory("output").resolve())
            subfolder_name = "" if relative.parent == Path(".") else relative.parent.as_posix()
            results.append({"filename": relative.name, "subfolder": subfolder_name, "type": "output"})
        return {"ui": {"images": results}}

    def _written_in(self, prompt) -> dict[Path, str]:
        """target -> source for the files written during this execution. ComfyUI (and the
        runner) pass the same `prompt` object to every call of one execution and keeps node
        instances between executions, so a new prompt object starts a new record; holding the
        prompt keeps its identity from being reused."""
        if getattr(self, "_prompt", None) is not prompt or not hasattr(self, "_written"):
            self._prompt, self._written = prompt, {}
        return self._written


def _collision(path: str, other: str, target: Path, name_template: str) -> str:
    """Why two sources get the same output name. The source's folder is kept in the output
    path, so only sources in one folder can meet: through a template without {stem}, or stems
    that differ only by extension."""
    clash = f"{path} and {other} would both be saved as {target}: "
    if "{stem}" not in name_template:
        return clash + f"name_template {name_template!r} has no {{stem}}, so every source gets that name"
    if PurePosixPath(path).stem == PurePosixPath(other).stem and "{ext}" not in name_template:
        return clash + "their names differ only by extension; put {ext} in name_template"
    return clash + f"name_template {name_template!r} gives them the same name"


def _alpha(mask, index: int, size, path) -> np.ndarray | None:
    """The alpha plane for image `index`, or None for no mask or an all-zero one (opaque)."""
    if mask is None:
        return None
    mask = mask.reshape(-1, *mask.shape[-2:])
    one = mask[min(index, len(mask) - 1)]
    if not one.any():
        return None
    if tuple(one.shape) != tuple(size):
        raise ValueError(
            f"{path}: mask is {one.shape[1]}x{one.shape[0]} but the image is {size[1]}x{size[0]}; "
            "upscale the mask with the image (the mask input of Upscale Image (RT4KSR))"
        )
    return 1.0 - one.float().cpu().numpy()


def png_text(prompt, extra_pnginfo) -> dict[str, str] | None:
    """SaveImage's metadata: the prompt and each extra_pnginfo entry (the editor's workflow) as
    JSON text chunks, so the PNG drags back into ComfyUI."""
    if not bridge.save_metadata():
        return None
    text = {} if prompt is None else {"prompt": json.dumps(prompt)}
    text.update({key: json.dumps(value) for key, value in (extra_pnginfo or {}).items()})
    return text


def format_problem(format: str | None, bit_depth: str | None) -> str | None:
    """Why `format` cannot be written at `bit_depth` (None when it can, or a value is linked)."""
    if format is not None and format not in FORMATS:
        return f"format {format!r} is not one of {list(FORMATS)}"
    if bit_depth is not None and bit_depth not in BIT_DEPTHS:
        return f"bit_depth {bit_depth!r} is not one of {BIT_DEPTHS}"
    if format == "exr" and importlib.util.find_spec("OpenEXR") is None:
        return "exr needs the OpenEXR package: pip install 'rt4ksr-nodes[exr]' (or pip install OpenEXR)"
    if format is None or bit_depth is None or bit_depth in FORMAT_DEPTHS.get(format, ("8", "16")):
        return None
    if format == "exr":
        return "exr stores bit_depth 16 (half floats) or 32 (floats), not 8"
    return f"bit_depth 32 (floats) is for exr only; use 8 or 16 for {format}"


def _job(target: Path, picture: Picture, format: str, quality: int, text: dict[str, str] | None,
         compression: int):
    if format == "jpeg" and picture.pixels.shape[-1] == 4:
        picture = Picture(picture.pixels[..., :3], picture.bits)  # JPEG has no alpha channel

    def write():  # creates the folder
        write_image(target, picture, quality, text, compress_level=compression, lossless=format == "webp lossless")
    return write


BATCH_NODES = {
    "RT4KSRLoadImageFolder": RT4KSRLoadImageFolder,
    "RT4KSRSaveImageBatch": RT4KSRSaveImageBatch,
}
BATCH_DISPLAY_NAMES = {
    "RT4KSRLoadImageFolder": "Load Image Folder (RT4KSR)",
    "RT4KSRSaveImageBatch": "Save Image Batch (RT4KSR)",
}
