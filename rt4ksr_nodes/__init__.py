"""rt4ksr_nodes: RT4KSR super-resolution for ComfyUI and headless pipelines.

Layers, imports flowing one way: model <- engine <- nodes <- runner.
"""

from .model import CheckpointError, load_model, reparameterize, save_model

__all__ = ["CheckpointError", "load_model", "reparameterize", "save_model"]
