"""Headless stand-ins for ComfyUI's core video nodes (comfy_extras/nodes_video.py), with their
names, inputs, outputs and files: LoadVideo, SaveVideo, CreateVideo, GetVideoComponents.

The VIDEO values are the pack's FileVideo and ComponentsVideo, which behave as ComfyUI's
VideoFromFile and VideoFromComponents; Upscale Video (RT4KSR)'s lazy VIDEO streams through
SaveVideo here as in the server. Files stay inside the input and output folders, and SaveVideo
writes a temporary file named when complete, taking the first free counter as Save Image does.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

from ..host import bridge
from ..files.paths import UnsafePathError
from ..nodes.video_values import Components, ComponentsVideo, FileVideo, comfy_metadata, save_video
from .core_nodes import SaveImage, annotated_path, input_files, save_image_path

CATEGORY = "image/video"
FORMATS = ["auto", "mp4"]
CODECS = ["auto", "h264"]


class LoadVideo:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"file": (input_files("video"), {"video_upload": True})}}

    @classmethod
    def VALIDATE_INPUTS(cls, file):
        try:
            exists = annotated_path(file).is_file()
        except UnsafePathError as error:
            return str(error)
        return True if exists else f"Invalid video file: {file} (no such file in {annotated_path(file).parent})"

    def load(self, file):
        return (FileVideo(annotated_path(file)),)


class SaveVideo:
    CATEGORY = CATEGORY
    DESCRIPTION = "Saves the input video to your ComfyUI output directory."
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    VALIDATE_INPUTS = SaveImage.VALIDATE_INPUTS  # the prefix must stay inside the output folder

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video": ("VIDEO",),
                "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                "format": (FORMATS, {"default": "auto"}),
                "codec": (CODECS, {"default": "auto"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(self, video, filename_prefix, format, codec, prompt=None, extra_pnginfo=None):
        width, height = video.get_dimensions()
        folder, filename, counter, subfolder, _ = save_image_path(
            filename_prefix, bridge.directory("output"), width, height
        )
        # The extension of both formats, auto and mp4. The counter is taken by creating the file,
        # as Save Image does: runs sharing the folder never take or replace each other's file.
        names = (folder / f"{filename}_{number:05}_.mp4" for number in itertools.count(counter))
        path = save_video(video, names, format, codec, comfy_metadata(prompt, extra_pnginfo))
        return {"ui": {"images": [{"filename": path.name, "subfolder": subfolder, "type": "output"}],
                       "animated": (True,)}}


class CreateVideo:
    CATEGORY = CATEGORY
    DESCRIPTION = "Create a video from images."
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "create"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}),
            },
            "optional": {"audio": ("AUDIO",)},
        }

    def create(self, images, fps, audio=None):
        return (ComponentsVideo(Components(images=images, frame_rate=Fraction(fps), audio=audio)),)


class GetVideoComponents:
    CATEGORY = CATEGORY
    DESCRIPTION = "Extracts all components from a video: frames, audio, and framerate."
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("images", "audio", "fps")
    FUNCTION = "split"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO",)}}

    def split(self, video):
        components = video.get_components()
        return (components.images, components.audio, float(components.frame_rate))


CORE_VIDEO_NODES = {
    "LoadVideo": LoadVideo,
    "SaveVideo": SaveVideo,
    "CreateVideo": CreateVideo,
    "GetVideoComponents": GetVideoComponents,
}
CORE_VIDEO_DISPLAY_NAMES = {
    "LoadVideo": "Load Video",
    "SaveVideo": "Save Video",
    "CreateVideo": "Create Video",
    "GetVideoComponents": "Get Video Components",
}
