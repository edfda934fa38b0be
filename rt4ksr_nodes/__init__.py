"""rt4ksr_nodes: RT4KSR super-resolution for ComfyUI and headless pipelines.

Layers, imports flowing one way: model <- engine <- video <- nodes <- runner; files/ (image
files, atomic writes, checkpoints) under all, host/ (the bridge to ComfyUI) beside nodes, and the
tools on top: cli/ (quick inference), evaluate/, bench/. The root keeps only this face and the
`python -m` entry modules (upscale.py, run.py).
"""

from .engine import UpscaleCancelled, UpscaleError, UpscaleOutOfMemory, upscale
from .model import CheckpointError, load_model, reparameterize, save_model


def __getattr__(name: str):
    # upscale_video(model, src, dst, **options) (video.pipeline) needs PyAV: imported on first use.
    if name == "upscale_video":
        from .video.pipeline import upscale_video

        return upscale_video
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The CLI module rt4ksr_nodes/upscale.py is not imported here: importing it rebinds the package
# attribute `upscale` to that module (made callable as this function for that case).

__all__ = [
    "CheckpointError",
    "UpscaleCancelled",
    "UpscaleError",
    "UpscaleOutOfMemory",
    "load_model",
    "reparameterize",
    "save_model",
    "upscale",
    "upscale_video",
]
