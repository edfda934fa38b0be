"""Folders of clips: Load Video Folder (RT4KSR) and Save Video Batch (RT4KSR), the video
counterparts of the image folder batch (batch.py) and the same pattern for the runner.

The loader lists clips and hands out lazy VIDEO values (nothing is decoded when loading), so
inside ComfyUI the list costs no memory and headless the runner streams the clips one by one
(`stream_items` / `stream_load`), with --resume and per-clip failures as for images. The saver
names each output from its source with a template and writes it through a temporary file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from ..host import bridge
from ..files.paths import UnsafePathError, inside
from ..video.detect import VIDEO_EXTENSIONS
from . import batch
from .common import CATEGORY
from .video_values import FileVideo, comfy_metadata, save_video

log = logging.getLogger(__name__)
CONTAINERS = ["mp4", "mkv", "mov"]
VIDEOS = ("video", VIDEO_EXTENSIONS, "video files (mp4, mov, mkv, webm, avi, ...)")  # for batch._listing


class RT4KSRLoadVideoFolder:
    DESCRIPTION = (
        "Lists every video of a folder inside the input folder (mp4, mov, mkv, webm, avi, ...), "
        "in sorted order, as a list: the nodes after it run once per clip. Nothing is decoded "
        "here; the path output carries each file's path relative to the folder, for Save Video "
        "Batch."
    )
    CATEGORY = CATEGORY
    # The path at batch.PATH_SLOT, where the runner's --resume looks for it, as for images.
    RETURN_TYPES = ("VIDEO", "FLOAT", "STRING")
    RETURN_NAMES = ("VIDEO", "fps", "path")
    OUTPUT_TOOLTIPS = (
        "Each clip, in sorted path order (lazy: read when it is used).",
        "Each clip's average frame rate, from its headers.",
        "Each clip's path relative to the folder, for Save Video Batch.",
    )
    OUTPUT_IS_LIST = (True, True, True)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": ("STRING", {"default": "", "tooltip": "Folder inside the input folder; "
                           "empty = the input folder."}),
                "pattern": ("STRING", {"default": "*", "tooltip": "File name pattern (any letter case), e.g. "
                            "*.mp4 or take_*.mov; with a / it matches the path inside the folder, e.g. day1/*.mp4."}),
                "recursive": ("BOOLEAN", {"default": False, "tooltip": "Include subfolders."}),
            }
        }

    @classmethod
    def stream_items(cls, folder, pattern, recursive) -> list[str]:
        """Relative paths (POSIX) of the matching clips (by extension), sorted, as the image
        folder lists images (batch._listing); what was left out is logged."""
        names, notes = batch._listing(cls._root(folder), folder, pattern, recursive, VIDEOS)
        for note in notes:
            log.warning("Load Video Folder (RT4KSR): %s", note)
        return names

    @classmethod
    def stream_load(cls, item: str, folder, pattern, recursive) -> tuple:
        """One clip's outputs, each a one-element list; reading its headers here makes a file
        that is not a video fail as this item, before any work."""
        from ..video.source import open_video

        path = cls._root(folder) / item
        with open_video(path) as container:
            rate = container.streams.video[0].average_rate
        return [FileVideo(path)], [float(rate or 0)], [item]

    @classmethod
    def VALIDATE_INPUTS(cls, folder=None):
        if folder is None:
            return True
        try:
            root = cls._root(folder)
        except UnsafePathError as error:
            return str(error)
        return True if root.is_dir() else batch._no_folder(folder, "video")

    @classmethod
    def IS_CHANGED(cls, folder, pattern, recursive) -> str:
        """Each matching file's path, size and modification time: new or replaced clips rerun."""
        root = cls._root(folder)
        digest = hashlib.sha256()
        for item in cls.stream_items(folder, pattern, recursive):
            stat = (root / item).stat()
            digest.update(f"{item}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    @staticmethod
    def _root(folder: str) -> Path:
        return inside(bridge.directory("input"), folder or ".")

    def load(self, folder, pattern, recursive):
        outputs, failures = ([], [], []), []
        for item in self.stream_items(folder, pattern, recursive):
            try:
                loaded = self.stream_load(item, folder, pattern, recursive)
            except ValueError as error:  # not a video: the other clips still run
                log.warning("Load Video Folder (RT4KSR): skipping %s", error)
                failures.append(str(error))
                report = batch.SKIPPED.get()
                if report:
                    report(item, str(error))
                continue
            for collected, value in zip(outputs, loaded):
                collected.extend(value)
        if failures and not outputs[0]:
            raise ValueError("no video could be read: " + "; ".join(failures))
        return outputs


class RT4KSRSaveVideoBatch:
    DESCRIPTION = (
        "Saves each clip under the output folder with its source's relative path and a name "
        "template ({stem}: source name without extension; {ext}, {width}, {height}). The "
        "encoding is the clip's own (Upscale Video (RT4KSR)'s codec and crf); audio is kept."
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
                "video": ("VIDEO", {"tooltip": "The clip to save."}),
                "path": ("STRING", {"forceInput": True, "tooltip": "Relative source path, from Load Video Folder."}),
                "name_template": ("STRING", {"default": "{stem}--2x", "tooltip": "Output name without "
                                  "extension: {stem}, {ext}, {width}, {height}."}),
                "subfolder": ("STRING", {"default": "", "tooltip": "Folder inside the output folder."}),
                "container": (CONTAINERS, {"default": "mp4", "tooltip": "File type (prores needs mov)."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    @classmethod
    def target(cls, path, name_template, subfolder, container, width=0, height=0) -> Path:
        """Named as Save Image Batch names its images (batch.output_paths)."""
        return batch.output_paths(path, name_template, subfolder, f".{container}", 1, width, height)[0]

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

    def save(self, video, path, name_template, subfolder, container, prompt=None, extra_pnginfo=None):
        target = self.target(path, name_template, subfolder, container, *video.get_dimensions())
        save_video(video, target, metadata=comfy_metadata(prompt, extra_pnginfo))
        relative = target.relative_to(bridge.directory("output").resolve())
        folder = "" if relative.parent == Path(".") else relative.parent.as_posix()
        return {"ui": {"images": [{"filename": relative.name, "subfolder": folder, "type": "output"}],
                       "animated": (True,)}}


VIDEO_BATCH_NODES = {
    "RT4KSRLoadVideoFolder": RT4KSRLoadVideoFolder,
    "RT4KSRSaveVideoBatch": RT4KSRSaveVideoBatch,
}
VIDEO_BATCH_DISPLAY_NAMES = {
    "RT4KSRLoadVideoFolder": "Load Video Folder (RT4KSR)",
    "RT4KSRSaveVideoBatch": "Save Video Batch (RT4KSR)",
}
