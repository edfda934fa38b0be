"""Model layer: pure torch. Architecture, checkpoint detection, reparameterization."""

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
