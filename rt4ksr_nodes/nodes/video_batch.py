"""Folders of clips: Load Video Folder (RT4KSR) and Save Video Batch (RT4KSR), the video
counterparts of the image folder batch (batch.py) and the same pattern for the runner.

The loader lists clips and hands out lazy VIDEO values (nothing is decoded when loading), so
inside ComfyUI the list costs no memory and headless the runner streams the clips one by one
(`stream_items` / `stream_load`), with --resume and per-clip failures as for images. The saver
names each output from its source with a template and writes it through a temporary file; as
Save Image Batch, it never replaces an existing file unless told to, and never saves two clips
under one name.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..host import bridge
from ..video.detect import VIDEO_EXTENSIONS
from . import batch
from .common import CATEGORY
from .video_values import FileVideo, comfy_metadata, save_video

log = logging.getLogger(__name__)
CONTAINERS = ["mp4", "mkv", "mov"]
VIDEOS = ("video", VIDEO_EXTENSIONS, "video files (mp4, mov, mkv, webm, avi, ...)")  # as batch.IMAGES


class RT4KSRLoadVideoFolder(batch.FolderLoader):
    DESCRIPTION = (
        "Lists every video of a folder inside the input folder (mp4, mov, mkv, webm, avi, ...), "
        "in sorted order, as a list: the nodes after it run once per clip. Nothing is decoded "
        "here; the path output carries each file's path relative to the folder, for Save Video "
        "Batch. The files the Save Video Batch nodes it feeds would write are never loaded, and "
        "their names are checked before any clip is computed."
    )
    # The path at batch.PATH_SLOT, where the runner's --resume looks for it, as for images.
    RETURN_TYPES = ("VIDEO", "FLOAT", "STRING")
    RETURN_NAMES = ("VIDEO", "fps", "path")
    OUTPUT_TOOLTIPS = (
        "Each clip, in sorted path order (lazy: read when it is used).",
        "Each clip's average frame rate, from its headers.",
        "Each clip's path relative to the folder, for Save Video Batch.",
    )
    FILES = VIDEOS
    NAME = "Load Video Folder (RT4KSR)"
    READ_ERROR = ValueError  # not a video (VideoError)
    PATTERNS = ("*.mp4 or take_*.mov", "day1/*.mp4")

    @classmethod
    def stream_load(cls, item: str, folder, pattern, recursive, **_) -> tuple:
        """One clip's outputs, each a one-element list; reading its headers here makes a file
        that is not a video fail as this item, before any work."""
        from ..video.source import open_video

        path = cls._root(folder) / item
        with open_video(path) as container:
            rate = container.streams.video[0].average_rate
        return [FileVideo(path)], [float(rate or 0)], [item]


class RT4KSRSaveVideoBatch:
    DESCRIPTION = (
        "Saves each clip under the output folder with its source's relative path and a name "
        "template ({stem}: source name without extension; {ext}, {width}, {height}). The "
        "encoding is the clip's own (Upscale Video (RT4KSR)'s codec and crf); audio is kept. "
        "An existing file is never replaced unless overwrite is on, and two clips are never "
        "saved under one name."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    # For the loader, which plans the names before any clip is computed (batch._plan_names).
    NAMING, ITEM = ("name_template", "subfolder", "container"), "clip"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video": ("VIDEO", {"tooltip": "The clip to save."}),
                "path": ("STRING", {"forceInput": True, "tooltip": "Relative source path, from Load Video Folder."}),
                "name_template": ("STRING", {"default": "{stem}--2x", "tooltip": "Output name without "
                                  "extension: {stem}, {ext}, {width}, {height}."}),
                "subfolder": ("STRING", {"default": "", "tooltip": "Folder inside the output folder."}),
                "container": (CONTAINERS, {"default": "mp4", "tooltip": "File type (prores needs mov)."}),
            },
            "optional": {  # optional, so that workflows saved before it existed keep working
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace outputs that already exist; "
                              "off: an existing output is never replaced (the clip fails with a clear error)."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    @classmethod
    def target(cls, path, name_template, subfolder, container, width=0, height=0) -> Path:
        """Named as Save Image Batch names its images (batch.output_paths)."""
        return batch.output_paths(path, name_template, subfolder, f".{container}", 1, width, height)[0]

    @classmethod
    def planned_target(cls, path, inputs: dict) -> Path | None:
        """Where source `path`'s clip goes, from the node's naming `inputs`; None when only the
        clip can tell (a size in the name) or the container is not known."""
        if batch.size_dependent(inputs["name_template"]) or inputs["container"] not in CONTAINERS:
            return None
        return cls.target(path, inputs["name_template"], inputs["subfolder"], inputs["container"])

    @classmethod
    def VALIDATE_INPUTS(cls, name_template=None, subfolder=None):
        """Names that could never be written are refused before any clip is computed."""
        if name_template is None or subfolder is None:
            return True
        try:
            cls.target("source.mp4", name_template, subfolder, "mp4")
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def output_complete(cls, path, name_template, subfolder, container, **_) -> bool:
        """The clip's output exists (the runner's --resume); unknown while the name depends on
        the size."""
        if batch.size_dependent(name_template):
            return False
        return cls.target(path, name_template, subfolder, container).is_file()

    @classmethod
    def existing_output(cls, path, name_template, subfolder, container, overwrite=False, **_) -> str | None:
        """Why this clip must not be computed (the runner asks first): its output exists and
        may not be replaced."""
        if overwrite is True or not cls.output_complete(path, name_template, subfolder, container):
            return None
        return batch._exists(cls.target(path, name_template, subfolder, container))

    def save(self, video, path, name_template, subfolder, container, overwrite=False, prompt=None,
             extra_pnginfo=None):
        target = self.target(path, name_template, subfolder, container, *video.get_dimensions())
        written = batch.written_in(self, prompt)
        if target in written:
            raise ValueError(batch._collision(path, written[target], target, name_template))
        written[target] = path
        try:
            save_video(video, [target], metadata=comfy_metadata(prompt, extra_pnginfo), overwrite=overwrite)
        except FileExistsError:  # never replaced, even when another run wrote it meanwhile
            raise FileExistsError(batch._exists(target)) from None
        relative = target.relative_to(bridge.directory("output").resolve())
        folder = "" if relative.parent == Path(".") else relative.parent.as_posix()
        return {"ui": {"images": [{"filename": relative.name, "subfolder": folder, "type": "output"}],
                       "animated": (True,)}}


RT4KSRLoadVideoFolder.SAVER = RT4KSRSaveVideoBatch  # defined after the loader, which reads it when run

VIDEO_BATCH_NODES = {
    "RT4KSRLoadVideoFolder": RT4KSRLoadVideoFolder,
    "RT4KSRSaveVideoBatch": RT4KSRSaveVideoBatch,
}
VIDEO_BATCH_DISPLAY_NAMES = {
    "RT4KSRLoadVideoFolder": "Load Video Folder (RT4KSR)",
    "RT4KSRSaveVideoBatch": "Save Video Batch (RT4KSR)",
}
