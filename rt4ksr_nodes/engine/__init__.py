"""Engine layer: turns a model and a ComfyUI IMAGE into an upscaled IMAGE.

Imports only torch, numpy, PIL and ..model; never ComfyUI.
"""

from .errors import UpscaleCancelled, UpscaleError, UpscaleOutOfMemory
from .inference import ALPHA_MODES, memory_needed, upscale
from .stream import upscale_frames

__all__ = [
    "ALPHA_MODES",
    "UpscaleCancelled",
    "UpscaleError",
    "UpscaleOutOfMemory",
    "memory_needed",
    "upscale",
    "upscale_frames",
]
