"""rt4ksr_nodes: RT4KSR super-resolution for ComfyUI and headless pipelines.

Layers, imports flowing one way: model <- engine <- nodes <- runner.
"""

from .engine import UpscaleCancelled, UpscaleError, UpscaleOutOfMemory, upscale
from .model import CheckpointError, load_model, reparameterize, save_model

# The CLI shim module rt4ksr_nodes/upscale.py is deliberately not imported here: importing it
# would rebind the package attribute `upscale` from the engine function to that module.

__all__ = [
    "CheckpointError",
    "UpscaleCancelled",
    "UpscaleError",
    "UpscaleOutOfMemory",
    "load_model",
    "reparameterize",
    "save_model",
    "upscale",
]
