"""Model layer: pure torch. Architecture, checkpoint detection, reparameterization, and the
architecture's description for spandrel (spandrel_arch.py, imported only where spandrel is).

Imports only torch, safetensors and ..files (file hashes); nothing above it."""

from .arch import RT4KSR
from .checkpoint import Checkpoint, CheckpointError, load_model, read_checkpoint, save_model
from .reparam import reparameterize

__all__ = [
    "RT4KSR",
    "Checkpoint",
    "CheckpointError",
    "load_model",
    "read_checkpoint",
    "reparameterize",
    "save_model",
]
