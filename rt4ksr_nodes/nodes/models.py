"""Load RT4KSR Model and Reparameterize RT4KSR."""

from __future__ import annotations

import logging
from pathlib import Path, PurePath

from ..host import bridge
from safetensors import safe_open

from ..files.paths import inside
from ..model import reparameterize, save_model
from ..model.checkpoint import ARCHITECTURE, holds_model
from . import catalogue
from .common import CATEGORY, MODEL_TYPE, model_input

log = logging.getLogger(__name__)


class RT4KSRModelLoader:
    DESCRIPTION = (
        "Loads an RT4KSR super-resolution model (x2: 1080p to 4K, x3: 720p to 4K). The released "
        "models are used from models/rt4ksr/ or models/upscale_models/ when a copy there matches "
        "the release's SHA-256 (no network), else downloaded on first use and verified; your own "
        "go in models/rt4ksr/."
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
                        "other entries are files in models/rt4ksr/ (a file under a released name "
                        "that is not the release shows as '<name> [not the release]') and RT4KSR "
                        "files found in models/upscale_models/."
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

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        """A name from the list, and a released model present or fetchable: found before
        anything runs, naming the folders searched and how to install offline."""
        return True if model_name is None else catalogue.problem(model_name) or True

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
                        "(.safetensors is added if missing; / between subfolders). Empty: do not "
                        "save. Existing files are never overwritten: the same model saved again "
                        "is left as it is.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, save_as=None):
        """A bad name, or a file in the way that is not a model this node saved, is found before
        anything runs (whether a saved model is the same one is known only once it is fused)."""
        if not save_as:
            return True
        try:
            path = cls.destination(save_as)
        except ValueError as error:
            return str(error)
        if path.exists() and not saved_model(path):
            return (
                f"save_as {save_as!r}: {path} already exists and is not a model saved by "
                "Reparameterize RT4KSR; choose another name (existing files are never overwritten)"
            )
        return True

    def fuse(self, model, save_as=""):
        if model.fused:
            log.info("RT4KSR: the model is already reparameterized; passing it through")
            fused = model
        else:
            fused = reparameterize(model)
            fused.description = model.description + ", reparameterized"
        if not save_as:
            return (fused,)
        path = self.destination(save_as)
        try:
            save_model(fused, path)
            log.info("RT4KSR: saved %s", path)
            return (fused,)
        except FileExistsError:
            if holds_model(path, fused):
                log.info("RT4KSR: %s already holds this model; not written again", path)
                return (fused,)
        # A rerun with another model upstream: the graph goes on, the file stays as it was.
        warning = (
            f"RT4KSR: {path} already holds another model and was left unchanged (files are never "
            "overwritten); choose another save_as name to save this one"
        )
        log.warning(warning)
        return {"ui": {"text": [warning]}, "result": (fused,)}

    @staticmethod
    def destination(name: str) -> Path:
        """models/rt4ksr/<name>.safetensors, for a plain name ("/" between subfolders)."""
        if name != name.strip():
            raise ValueError(f"save_as {name!r} begins or ends with spaces; give the name without them")
        if "\\" in name:
            raise ValueError(f"save_as {name!r}: use / between folders, never \\ (the model list could not load it)")
        if name.endswith("/"):
            raise ValueError(f"save_as {name!r} names a folder; give a file name, such as {name}my_model")
        for part in name.split("/"):
            if not part.strip(".") or part != part.strip():
                raise ValueError(
                    f"save_as {name!r}: {part!r} is not a file or folder name (empty, only dots, or "
                    "with surrounding spaces); give a name such as my_model or subfolder/my_model"
                )
            bad = sorted({c for c in part if c in UNPORTABLE or ord(c) < 32})
            if bad:
                raise ValueError(f"save_as {name!r}: the characters {''.join(bad)!r} are not allowed in file names")
        if PurePath(name).suffix.lower() != ".safetensors":
            name += ".safetensors"
        return inside(bridge.model_folders(bridge.MODEL_FOLDER)[0], name)  # refuses symlinks out


# Not allowed in file names on Windows: a saved model must load on every system.
UNPORTABLE = set('<>:"|?*')


def saved_model(path: Path) -> bool:
    """Whether `path` is an RT4KSR .safetensors written by this pack (its metadata says so)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # noqa: BLE001 - anything unreadable is not one of ours
        return False
    return metadata.get("architecture") == ARCHITECTURE and "source_sha256" in metadata
