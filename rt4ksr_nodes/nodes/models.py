"""Load RT4KSR Model and Reparameterize RT4KSR."""

from __future__ import annotations

import logging
from pathlib import Path, PurePath

from .. import comfy_bridge as bridge
from ..fileio import inside
from ..model import reparameterize, save_model
from . import catalogue
from .common import CATEGORY, MODEL_TYPE, model_input

log = logging.getLogger(__name__)


class RT4KSRModelLoader:
    DESCRIPTION = (
        "Loads an RT4KSR super-resolution model (x2: 1080p to 4K, x3: 720p to 4K). The released "
        "models are downloaded on first use and verified by SHA-256; your own go in "
        "models/rt4ksr/."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded model, ready for Upscale Image (RT4KSR).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (
                    catalogue.choices(),
                    {
                        "tooltip": "rt4ksr_x2.pth / rt4ksr_x3.pth are the released models; "
                        "other entries are files in models/rt4ksr/ and RT4KSR files found in "
                        "models/upscale_models/."
                    },
                ),
                "reparameterize": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Fuse each train-time block into one 3x3 convolution: the "
                        "same output, 2.5-4x faster. Turn off only to inspect the train-time "
                        "network.",
                    },
                ),
            }
        }

    @classmethod
    def IS_CHANGED(cls, model_name, reparameterize):
        return catalogue.change_signature(model_name)

    def load(self, model_name, reparameterize):
        model = catalogue.load(model_name, reparameterize)
        log.info("RT4KSR: %s", model.description)
        return (model,)


class RT4KSRReparameterize:
    DESCRIPTION = (
        "Fuses a train-time RT4KSR model into its fast inference form (identical output). "
        "Optionally saves the result as .safetensors in models/rt4ksr/."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The fused model.",)
    FUNCTION = "fuse"
    OUTPUT_NODE = True  # it may write a file, so it runs even with nothing connected after it

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"model": model_input("The RT4KSR model to fuse.")},
            "optional": {
                "save_as": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "File name to save the fused model as, in models/rt4ksr/ "
                        "(.safetensors is added if missing). Empty: do not save. Existing files "
                        "are never overwritten.",
                    },
                ),
            },
        }

    def fuse(self, model, save_as=""):
        if model.fused:
            log.info("RT4KSR: the model is already reparameterized; passing it through")
            fused = model
        else:
            fused = reparameterize(model)
            fused.description = model.description + ", reparameterized"
        if save_as.strip():
            path = save_model(fused, self.destination(save_as.strip()))
            log.info("RT4KSR: saved %s", path)
        return (fused,)

    @staticmethod
    def destination(name: str) -> Path:
        if not PurePath(name).name:
            raise ValueError(f"save_as {name!r} must be a file name inside models/rt4ksr/")
        if PurePath(name).suffix.lower() != ".safetensors":
            name += ".safetensors"
        path = inside(bridge.model_folders(bridge.MODEL_FOLDER)[0], name)  # refuses ../, /abs
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another save_as name")
        return path
