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
import os
import re
import string
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..host import bridge
from ..files.paths import UnsafePathError, brief, inside
from ..files.images import IMAGE_EXTENSIONS, PNG_LEVEL, ImageReadError, Picture, read_image, write_image
from .common import CATEGORY

log = logging.getLogger(__name__)
FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "webp lossless": ".webp", "tiff": ".tif", "exr": ".exr"}
BIT_DEPTHS = ["8", "16", "32"]
# The depths each format stores (others store 8 bits only).
FORMAT_DEPTHS = {"png": ("8", "16"), "tiff": ("8", "16"), "exr": ("16", "32")}
TEMPLATE_FIELDS = ("stem", "ext", "width", "height")
PATH_SLOT = 2  # the loader's output carrying the file's relative path
IMAGES = ("image", IMAGE_EXTENSIONS, "PNG, JPEG, WebP, TIFF and BMP")  # what, extensions, in words

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


class FolderLoader:
    """What the image and video folder loaders share: the listing (batch._listing), leaving out
    the workflow's own outputs, validation, IS_CHANGED, the runner's stream (`stream_items`,
    and the subclass's `stream_load`) and the whole list inside ComfyUI (`load`). A subclass
    sets FILES (what, extensions, in words: IMAGES or the video loader's), NAME (for messages),
    READ_ERROR (what a file that cannot be read raises), SAVER (the Save ... Batch class it
    feeds, set below its definition) and PATTERNS (the pattern tooltip's examples)."""

    CATEGORY = CATEGORY
    OUTPUT_IS_LIST = (True, True, True)  # every output a list, the path one at PATH_SLOT
    FUNCTION = "load"
    FILES: tuple
    NAME: str
    READ_ERROR: type[Exception]
    SAVER: type
    PATTERNS: tuple[str, str]  # example patterns for the tooltip: by name, by path

    @classmethod
    def INPUT_TYPES(cls):
        by_name, by_path = cls.PATTERNS
        return {
            "required": {
                "folder": ("STRING", {"default": "", "tooltip": "Folder inside the input folder; empty = the input folder."}),
                "pattern": ("STRING", {"default": "*", "tooltip": f"File name pattern (any letter case), e.g. {by_name}; "
                            f"with a / it matches the path inside the folder, e.g. {by_path}."}),
                "recursive": ("BOOLEAN", {"default": False, "tooltip": "Include subfolders."}),
            },
            # To find the SAVER nodes fed by this loader: their names are checked before
            # anything is computed, and their outputs are never read back as inputs.
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def stream_items(cls, folder, pattern, recursive, prompt=None, unique_id=None) -> list[str]:
        """Relative paths (POSIX) of the files to load, sorted (see `_items`); what was left
        out is logged."""
        items, notes = cls._items(folder, pattern, recursive, prompt, unique_id)
        for note in notes:
            log.warning("%s: %s", cls.NAME, note)
        return items

    @classmethod
    def _items(cls, folder, pattern, recursive, prompt=None, unique_id=None) -> tuple[list[str], list[str]]:
        """The matching files and notes on what was left out. The files this workflow
        (`prompt`) writes are left out: those of the SAVER nodes this loader feeds, and the
        core save nodes' numbered files; a folder batch never reads its own outputs, even with
        the output folder inside the input folder. Raises ValueError, before anything is
        computed, when two sources would be saved under one name or a source under its own."""
        root = cls._root(folder)
        names, notes = _listing(root, folder, pattern, recursive, cls.FILES)
        searched = f"{brief(folder)} matching {brief(pattern)}"
        return _without_own_outputs(root, names, notes, prompt, unique_id, cls.SAVER, searched), notes

    @classmethod
    def VALIDATE_INPUTS(cls, folder=None, pattern=None, recursive=None):
        """The folder must exist inside the input folder and hold a matching file before
        anything runs."""
        if folder is None:
            return True
        try:
            root = cls._root(folder)
        except UnsafePathError as error:
            return str(error)
        if not root.is_dir():
            return _no_folder(folder, cls.FILES[0])
        if pattern is not None and recursive is not None:
            try:
                _listing(root, folder, pattern, recursive, cls.FILES)
            except FileNotFoundError as error:
                return str(error)
        return True

    @classmethod
    def IS_CHANGED(cls, folder, pattern, recursive, **_) -> str:
        """A hash of each matching file's relative path, size and modification time: ComfyUI
        reruns the loader (instead of reusing its list) when files are added or replaced. Quiet:
        ComfyUI asks at every queued prompt; what is left out is told when loading."""
        root = cls._root(folder)
        digest = hashlib.sha256()
        for item in _listing(root, folder, pattern, recursive, cls.FILES)[0]:
            stat = (root / item).stat()
            digest.update(f"{item}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    @staticmethod
    def _root(folder: str) -> Path:
        return inside(bridge.directory("input"), folder or ".")

    def load(self, folder, pattern, recursive, prompt=None, unique_id=None):
        items, notes = self._items(folder, pattern, recursive, prompt, unique_id)
        _refuse_existing(self._root(folder), items, prompt, unique_id, self.SAVER)
        outputs, failures = ([], [], []), []
        for item in items:
            try:
                loaded = self.stream_load(item, folder, pattern, recursive)
            except self.READ_ERROR as error:  # one bad file must not sink the others
                failures.append(str(error))
                report = SKIPPED.get()
                if report:
                    report(item, str(error))  # the runner counts it as a failed item
                else:
                    notes.append(f"skipped {error}")
                continue
            for collected, value in zip(outputs, loaded):
                collected.extend(value)
        if failures and not outputs[0]:
            raise self.READ_ERROR(f"no {self.FILES[0]} could be read: " + "; ".join(failures))
        for note in notes:
            log.warning("%s: %s", self.NAME, note)
        # Shown on the node (and kept in the history): a skipped file is not a silent success.
        return {"ui": {"text": notes}, "result": outputs} if notes else outputs


class RT4KSRLoadImageFolder(FolderLoader):
    DESCRIPTION = (
        "Loads every image of a folder inside the input folder (PNG, JPEG, WebP, TIFF, BMP; 8 or "
        "16 bits), in sorted order, as a list: the nodes after it run once per image. The path "
        "output carries each file's path relative to the folder, for Save Image Batch. The files "
        "the Save Image Batch nodes it feeds would write are never loaded, and their names are "
        "checked before any image is computed."
    )
    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("IMAGE", "MASK", "path")
    OUTPUT_TOOLTIPS = (
        "Each image, in sorted path order.",
        "Each image's mask (1 - alpha; zeros for opaque images).",
        "Each image's path relative to the folder, for Save Image Batch.",
    )
    FILES = IMAGES
    NAME = "Load Image Folder (RT4KSR)"
    READ_ERROR = ImageReadError
    PATTERNS = ("*.png or frame_*.tif", "sub/*.png")

    @classmethod
    def stream_load(cls, item: str, folder, pattern, recursive, **_) -> tuple:
        """The outputs for one file, each a one-element list."""
        picture = read_image(cls._root(folder) / item)
        image, mask = _as_comfy(picture)
        return [image], [mask], [SourcePath(item, picture.icc_profile)]


class SourcePath(str):
    """The loader's path output: the source's relative path, carrying its ICC colour profile
    so that Save Image Batch writes the image in the colour space it came in."""

    def __new__(cls, path: str, icc_profile: bytes | None = None):
        value = super().__new__(cls, path)
        value.icc_profile = icc_profile
        return value


def _listing(root: Path, folder: str, pattern: str, recursive: bool, files: tuple) -> tuple[list[str], list[str]]:
    """(matching paths relative to `root` of `files` (IMAGES, or the video loader's), sorted;
    notes on what was left out). A pattern with a '/' is matched against the relative path, one
    without against the file name, in any letter case; hidden files and folders (and so the
    pack's temporary files) are left out, and so are symlinks that lead out of the input folder."""
    what, extensions, described = files
    if not root.is_dir():
        raise FileNotFoundError(_no_folder(folder, what))
    pattern = (pattern or "*").lower()
    found = root.rglob("*") if recursive else root.iterdir()
    names, notes, others = [], [], []
    for path in found:
        relative = path.relative_to(root).as_posix()
        if (any(p.startswith(".") for p in relative.split("/"))
                or not fnmatch.fnmatchcase((relative if "/" in pattern else path.name).lower(), pattern)):
            continue
        if path.suffix.lower() not in extensions:
            others.append(relative)
            continue
        try:
            inside(root, relative)
        except UnsafePathError as error:
            notes.append(f"skipped {path}: {error}")
            continue
        if path.is_file():
            names.append(relative)
    if not names:
        searched = f"{root} and its subfolders" if recursive else f"{root}, not its subfolders"
        why = ""
        if others:
            why = (f": {len(others)} file{'s' * (len(others) > 1)} match{'es' * (len(others) == 1)} (e.g. "
                   f"{brief(min(others))}) but this loader reads only {described}")
        raise FileNotFoundError(f"no {what} in {brief(folder)} matches {brief(pattern)} (searched {searched}){why}")
    return sorted(names), notes


def _without_own_outputs(root: Path, names: list[str], notes: list[str], prompt, unique_id, saver,
                         searched: str) -> list[str]:
    """`names` less the files this workflow (`prompt`) writes: those of the `saver` nodes (Save
    Image Batch, Save Video Batch) loader `unique_id` feeds, and the numbered files of the core
    save nodes (SaveImage, SaveVideo); a folder batch never reads its own outputs, even with the
    output folder inside the input folder. What was left out is added to `notes`. Raises
    ValueError, before anything is computed, when two sources would be saved under one name or
    a source under its own, and FileNotFoundError, saying where it looked (`searched`), when
    nothing is left."""
    outputs = {}
    for inputs in _savers(prompt, unique_id, saver):
        outputs.update(_plan_names(root, names, inputs, outputs, saver))
    numbered = _numbered_outputs(prompt)
    own = {n for n in names if (path := (root / n).resolve()) in outputs
           or any(path.parent == where and name.fullmatch(path.name) for where, name in numbered)}
    if not own:
        return names
    notes.append(f"left out {len(own)} file{'s' * (len(own) > 1)} that this workflow writes "
                 f"(e.g. {min(own)}): a folder batch never reads its own outputs")
    names = [n for n in names if n not in own]
    if not names:
        raise FileNotFoundError(f"every {saver.ITEM} in {searched} is an output of this workflow; nothing is "
                                "left to load")
    return names


def _savers(prompt, unique_id, saver) -> list[dict]:
    """The inputs of the `saver` nodes whose path comes straight from loader `unique_id` in
    `prompt`, when their naming inputs are plain values (else unknown here)."""
    if not isinstance(prompt, dict) or unique_id is None:
        return []
    savers = []
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict) or node.get("class_type") != saver.__name__:
            continue
        link = inputs.get("path")
        named = all(isinstance(inputs.get(k), str) for k in saver.NAMING)
        if isinstance(link, list) and len(link) == 2 and str(link[0]) == str(unique_id) and link[1] == PATH_SLOT and named:
            savers.append(inputs)
    return savers


# The core save nodes' numbered files (`x_00001_.png`): class_type -> extension.
NUMBERED = {"SaveImage": ".png", "SaveVideo": ".mp4"}


def _numbered_outputs(prompt) -> list[tuple[Path, re.Pattern]]:
    """(folder, file name pattern) of the files the core save nodes in `prompt` number, for
    prefixes given as plain values without %date% tokens."""
    if not isinstance(prompt, dict):
        return []
    found = []
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        prefix = inputs.get("filename_prefix") if isinstance(inputs, dict) else None
        extension = NUMBERED.get(node.get("class_type")) if isinstance(node, dict) else None
        if not isinstance(prefix, str) or extension is None or "%" in prefix:
            continue
        normal = os.path.normpath(prefix)
        try:
            where = inside(bridge.directory("output"), os.path.dirname(normal) or ".")
        except UnsafePathError:
            continue
        pattern = re.escape(os.path.basename(normal)) + r"_\d{5,}_" + re.escape(extension)
        found.append((where, re.compile(pattern, re.IGNORECASE)))
    return found


def _plan_names(root: Path, names: list[str], inputs: dict, taken: dict[Path, str], saver) -> dict[Path, str]:
    """target -> source for one `saver` node's `inputs` (names that depend on the output's size
    are known only when saving); raises ValueError for a name that cannot be written or is
    taken twice."""
    planned = {}
    for name in names:
        target = saver.planned_target(name, inputs)
        if target is None:
            return {}
        if target == (root / name).resolve():
            raise ValueError(f"{name} would be saved over itself as {target}: change name_template or subfolder")
        other = planned.get(target) or taken.get(target)
        if other is not None:
            raise ValueError(_collision(name, other, target, inputs["name_template"])
                             + f" (found before computing any {saver.ITEM})")
        planned[target] = name
    return planned


def _refuse_existing(root: Path, names: list[str], prompt, unique_id, saver) -> None:
    """When the loader gives the whole list (inside ComfyUI): refuse, before anything is
    computed, a batch some of whose outputs exist and may not be replaced (the runner's stream
    decides per item instead, where --resume may skip them)."""
    for inputs in _savers(prompt, unique_id, saver):
        if inputs.get("overwrite") is True:
            continue
        existing = [t for t in _plan_names(root, names, inputs, {}, saver) if t.exists()]
        if existing:
            raise FileExistsError(
                f"{len(existing)} of the outputs already exist (e.g. {existing[0]}); set overwrite to replace "
                "them, or choose another subfolder or name_template"
            )


def _no_folder(folder: str, what: str = "image") -> str:
    return f"{what} folder {folder!r} does not exist in {bridge.directory('input')}"


class RT4KSRSaveImageBatch:
    DESCRIPTION = (
        "Saves each image under the output folder with its source's relative path and a name "
        "template ({stem}: source name without extension; {ext}, {width}, {height}), as PNG "
        "(8 or 16 bits, at a chosen compression level), JPEG, WebP (lossy or lossless), TIFF "
        "(8 or 16 bits) or OpenEXR (16-bit half or 32-bit float; needs the OpenEXR package). "
        "A mask, when not all zero, is written as alpha; the source's colour profile is kept. "
        "An existing file is never replaced unless overwrite is on."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    FUNCTION = "save_list"
    OUTPUT_NODE = True
    # Lists in one call only to see Cancel between images (save_list); the images are saved
    # independently, so the headless runner still streams through this node.
    INPUT_IS_LIST = True
    ELEMENTWISE = True
    # For the loader, which plans the names before any image is computed (_plan_names).
    NAMING, ITEM = ("name_template", "subfolder", "format"), "image"

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
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace outputs that already exist; "
                              "off: an existing output is never replaced (the image fails with a clear error)."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    @classmethod
    def targets(cls, path, name_template, subfolder, format, count=1, width=0, height=0) -> list[Path]:
        """Where the images for source `path` go (numbered -0, -1, … for a batch of several)."""
        return output_paths(path, name_template, subfolder, FORMATS[format], count, width, height)

    @classmethod
    def planned_target(cls, path, inputs: dict) -> Path | None:
        """Where the single image of source `path` goes, from the node's naming `inputs`; None
        when only the image can tell (a size in the name) or the format is not known."""
        if size_dependent(inputs["name_template"]) or inputs["format"] not in FORMATS:
            return None
        return cls.targets(path, inputs["name_template"], inputs["subfolder"], inputs["format"])[0]

    @classmethod
    def VALIDATE_INPUTS(cls, name_template=None, subfolder=None, format=None, bit_depth=None):
        """Refuse, before any image is computed, names that could never be written (a dummy
        source stands in for the paths that come from the loader) and format/depth pairs that
        cannot be stored. Linked values (None here) are checked when the images are saved."""
        # ComfyUI passes the values of an INPUT_IS_LIST node as lists.
        name_template, subfolder, format, bit_depth = (
            value[0] if isinstance(value, list) and len(value) == 1 else value
            for value in (name_template, subfolder, format, bit_depth))
        problem = format_problem(format, bit_depth)
        if problem:
            return problem
        if name_template is None or subfolder is None:
            return True
        try:
            cls.targets("source.png", name_template, subfolder, format or "png")
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def output_complete(cls, path, name_template, subfolder, format, **_) -> bool:
        """True when this source's output exists (the runner's --resume); only single images
        with names free of {width}/{height} can be known before the image is computed."""
        if size_dependent(name_template):
            return False
        return all(target.is_file() for target in cls.targets(path, name_template, subfolder, format))

    @classmethod
    def existing_output(cls, path, name_template, subfolder, format, overwrite=False, **_) -> str | None:
        """Why this source must not be computed: its output exists and may not be replaced."""
        if overwrite is True or not cls.output_complete(path, name_template, subfolder, format):
            return None
        return _exists(cls.targets(path, name_template, subfolder, format)[0])

    def save_list(self, **lists):
        """Every image of ComfyUI's list in one call (inputs are lists; shorter ones repeat
        their last value). ComfyUI checks Cancel before each call of a node and drops the UI
        results of a node it stops, so with one call per image the files saved before a Cancel
        were missing from the history. Here Cancel stops between images, and every file
        written is reported."""
        count = max(len(values) for values in lists.values())
        results = []
        for index in range(count):
            if index and bridge.cancel_requested():
                note = f"Cancelled: {len(results)} files saved, for {index} of the {count} images"
                return {"ui": {"images": results, "text": [note]}}
            one = {name: values[min(index, len(values) - 1)] for name, values in lists.items()}
            results += self.save(**one)["ui"]["images"]
        return {"ui": {"images": results}}

    def save(self, images, path, name_template, subfolder, format, bit_depth, quality, mask=None, overwrite=False,
             compression=PNG_LEVEL, prompt=None, extra_pnginfo=None):
        problem = format_problem(format, bit_depth)
        if problem:
            raise ValueError(problem)
        height, width = images.shape[1:3]
        targets = self.targets(path, name_template, subfolder, format, len(images), width, height)
        text = png_text(prompt, extra_pnginfo) if format == "png" else None
        icc = getattr(path, "icc_profile", None)
        results = []
        written = written_in(self, prompt)
        for index, (image, target) in enumerate(zip(images, targets)):
            if target in written:
                raise ValueError(_collision(path, written[target], target, name_template))
            written[target] = path
            pixels = image.float().cpu().numpy()
            alpha = _alpha(mask, index, pixels.shape[:2], path)
            if alpha is not None:
                pixels = np.concatenate([pixels, alpha[..., None]], axis=-1)
            job = _job(target, Picture(pixels, int(bit_depth), icc), format, quality, text, overwrite, compression)
            submit = WRITER.get()
            submit(job) if submit else job()
            relative = target.relative_to(bridge.directory("output").resolve())
            subfolder_name = "" if relative.parent == Path(".") else relative.parent.as_posix()
            results.append({"filename": relative.name, "subfolder": subfolder_name, "type": "output"})
        return {"ui": {"images": results}}


def written_in(node, prompt) -> dict[Path, str]:
    """target -> source for the files save node `node` wrote during this execution. ComfyUI (and
    the runner) pass the same `prompt` object to every call of one execution and keep node
    instances between executions, so a new prompt object starts a new record; holding the
    prompt keeps its identity from being reused."""
    if getattr(node, "_prompt", None) is not prompt or not hasattr(node, "_written"):
        node._prompt, node._written = prompt, {}
    return node._written


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
        return f"format {brief(format)} is not one of {list(FORMATS)}"
    if bit_depth is not None and bit_depth not in BIT_DEPTHS:
        return f"bit_depth {brief(bit_depth)} is not one of {BIT_DEPTHS}"
    if format == "exr" and importlib.util.find_spec("OpenEXR") is None:
        return "exr needs the OpenEXR package: pip install 'rt4ksr-nodes[exr]' (or pip install OpenEXR)"
    if format is None or bit_depth is None or bit_depth in FORMAT_DEPTHS.get(format, ("8",)):
        return None
    if format == "exr":
        return "exr stores bit_depth 16 (half floats) or 32 (floats), not 8"
    if bit_depth == "32":
        return f"bit_depth 32 (floats) is for exr only; use 8 or 16 for {format}"
    return (f"{format} stores 8 bits per channel, so bit_depth 16 would be written as 8; choose "
            "png, tiff or exr for 16 bits, or bit_depth 8")


def _job(target: Path, picture: Picture, format: str, quality: int, text: dict[str, str] | None,
         overwrite: bool, compression: int):
    if format == "jpeg" and picture.pixels.shape[-1] == 4:
        picture = Picture(picture.pixels[..., :3], picture.bits, picture.icc_profile)  # JPEG has no alpha

    def write() -> Path:
        try:
            write_image(target, picture, quality, text, overwrite=overwrite, compress_level=compression,
                        lossless=format == "webp lossless")  # creates the folder
        except FileExistsError:
            raise FileExistsError(_exists(target)) from None
        return target  # what the runner reports when an interrupt cut the item short
    return write


def _exists(target: Path) -> str:
    return (f"{target} already exists; set overwrite to replace it, or skip finished items (the runner's "
            "--resume)")


def output_paths(path: str, name_template: str, subfolder: str, extension: str, count: int = 1,
                 width: int = 0, height: int = 0) -> list[Path]:
    """Where a folder batch saves the outputs of source `path` (numbered -0, -1, … when there
    are several): `subfolder` of the output folder, then the source's own folder inside it,
    named by `name_template` (only the documented fields) plus `extension`."""
    source = PurePosixPath(path)
    stem = _render(name_template, stem=source.stem, ext=source.suffix[1:], width=width, height=height)
    names = [stem] if count == 1 else [f"{stem}-{i}" for i in range(count)]
    base = inside(bridge.directory("output"), subfolder or ".")
    # inside() again: a source path with .. stays in subfolder, and too long names are refused.
    return [inside(base, str(source.parent / (name + extension))) for name in names]


def size_dependent(name_template: str) -> bool:
    """Whether the names `name_template` gives depend on the output's size (known only then)."""
    return bool({"width", "height"} & set(_fields(name_template)))


def _fields(template: str) -> list[str]:
    """The replacement fields of a name template; raises ValueError for anything but the
    documented fields: no format specs, conversions, indexing or attributes (which would let a
    template build huge names or reach into Python objects)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"name_template {brief(template)}: {error} (write {{{{ and }}}} for literal braces)") from None
    fields = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS or spec or conversion:
            shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"name_template {brief(template)}: {brief(shown)} is not allowed; use only "
                             "{stem}, {ext}, {width} and {height}, as they are")
        fields.append(field)
    return fields


def _render(template: str, **values) -> str:
    """The file name (without extension) `template` gives; raises ValueError for a template
    outside the documented fields or a name that is not a plain file name."""
    _fields(template)
    name = template.format(**values)
    if not name.strip(" ."):
        why = "is empty" if not name else f"is {brief(name)}"
        raise ValueError(f"name_template {brief(template)}: the file name {why}; it needs a character other "
                         "than spaces and dots, e.g. {stem}--2x")
    if any(c in name for c in "/\\") or any(ord(c) < 32 for c in name):
        raise ValueError(f"name_template {brief(template)} gives {brief(name)}: a file name cannot contain / "
                         "or \\ or control characters; put folders in subfolder")
    return name


RT4KSRLoadImageFolder.SAVER = RT4KSRSaveImageBatch  # defined after the loader, which reads it when run

BATCH_NODES = {
    "RT4KSRLoadImageFolder": RT4KSRLoadImageFolder,
    "RT4KSRSaveImageBatch": RT4KSRSaveImageBatch,
}
BATCH_DISPLAY_NAMES = {
    "RT4KSRLoadImageFolder": "Load Image Folder (RT4KSR)",
    "RT4KSRSaveImageBatch": "Save Image Batch (RT4KSR)",
}
