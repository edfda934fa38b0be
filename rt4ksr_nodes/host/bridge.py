"""The one module that talks to ComfyUI's services; every call falls back cleanly without it.

ComfyUI is never imported at import time. Inside a ComfyUI server its modules are already loaded
and are used; headless (the runner, tests, scripts) the `headless` settings below stand in:
directories, a progress factory and an interrupt flag that the runner configures.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..files.weights import weights_dir

MODEL_FOLDER = "rt4ksr"
UPSCALE_FOLDER = "upscale_models"
MODEL_EXTENSIONS = {".pth", ".pt", ".safetensors"}


def _comfy(module: str):
    """A ComfyUI module if this process is a ComfyUI server (which has already loaded it), else
    None. Looking in sys.modules, never importing, keeps ComfyUI out of headless processes."""
    return sys.modules.get(module)


def in_server() -> bool:
    """Whether this process is a ComfyUI server."""
    return _comfy("folder_paths") is not None


@dataclass
class Headless:
    """Stand-ins for ComfyUI's folders and hooks when no server is running."""

    base_dir: Path = field(default_factory=Path.cwd)
    input_dir: Path | None = None
    output_dir: Path | None = None
    models_dir: Path | None = None
    device: object = "auto"  # a torch.device or "auto" (the engine then picks CUDA, MPS, CPU)
    progress_factory: Callable[[], Callable[[int, int], None]] | None = None
    interrupt: threading.Event = field(default_factory=threading.Event)
    metadata: bool = True  # embed the workflow in saved PNGs (ComfyUI's --disable-metadata turns it off)
    # upscale_video's segment, resume and run_segments for long videos (the runner's --segment,
    # --resume, --backend ray)
    video_segments: dict = field(default_factory=dict)

    def folder(self, name: str) -> Path:
        explicit = {"input": self.input_dir, "output": self.output_dir}
        return Path(explicit[name] or self.base_dir / name).resolve()


headless = Headless()


def register_model_folder() -> None:
    """Register models/rt4ksr with ComfyUI, keeping paths extra_model_paths.yaml already added."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return
    paths, extensions = folder_paths.folder_names_and_paths.get(MODEL_FOLDER, ([], set()))
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    if default not in paths:
        paths.insert(0, default)
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(extensions) | MODEL_EXTENSIONS)


def model_folders(kind: str) -> list[Path]:
    """The folders searched for `kind` ("rt4ksr" or "upscale_models"). Headless, without a
    models folder, only the pack's own weights folder holds RT4KSR models."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        if kind == MODEL_FOLDER:
            register_model_folder()
        return [Path(p) for p in folder_paths.get_folder_paths(kind)]
    if headless.models_dir is not None:
        return [Path(headless.models_dir).resolve() / kind]
    return [weights_dir()] if kind == MODEL_FOLDER else []


def directory(kind: str) -> Path:
    """ComfyUI's input or output directory (headless: the runner's)."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        getter = {"input": folder_paths.get_input_directory, "output": folder_paths.get_output_directory}
        return Path(getter[kind]())
    return headless.folder(kind)


def save_metadata() -> bool:
    """Whether saved PNGs carry the prompt and workflow: ComfyUI's --disable-metadata inside a
    server, the runner's --no-metadata headless."""
    cli_args = _comfy("comfy.cli_args")
    return not cli_args.args.disable_metadata if cli_args is not None else headless.metadata


def torch_device():
    """ComfyUI's compute device; headless, the runner's (default "auto": the engine chooses)."""
    management = _comfy("comfy.model_management")
    return management.get_torch_device() if management is not None else headless.device


def intermediate_device():
    """Where node outputs live between nodes (ComfyUI's intermediate device; CPU headless)."""
    management = _comfy("comfy.model_management")
    return management.intermediate_device() if management is not None else "cpu"


def free_memory(required_bytes: int, device) -> None:
    """Ask ComfyUI to unload other models so `required_bytes` fit on `device`."""
    management = _comfy("comfy.model_management")
    if management is not None:
        management.free_memory(required_bytes, device)


def progress() -> Callable[[int, int], None] | None:
    """A `progress(done, total)` callback: ComfyUI's progress bar, or the runner's."""
    utils = _comfy("comfy.utils")
    if utils is not None:
        bar = utils.ProgressBar(1)
        return lambda done, total: bar.update_absolute(done, total)
    return headless.progress_factory() if headless.progress_factory else None


def video_segments() -> dict:
    """How a long video is cut and where its segments run, as upscale_video's keyword
    arguments: headless, the runner's; inside a ComfyUI server none (one pass: nothing there
    would resume a job's segments)."""
    return {} if in_server() else dict(headless.video_segments)


def video_input_class() -> type | None:
    """ComfyUI's VideoInput base class inside a server (None headless)."""
    for name in ("comfy_api.latest._input", "comfy_api.input"):
        module = _comfy(name)
        if module is not None and hasattr(module, "VideoInput"):
            return module.VideoInput
    return None


_video_classes: dict[tuple[type, type], type] = {}


def video_class(cls: type) -> type:
    """`cls` (which implements ComfyUI's video interface) made a subclass of ComfyUI's
    VideoInput inside a server, so that nodes checking isinstance accept it; `cls` headless."""
    base = video_input_class()
    if base is None:
        return cls
    if (cls, base) not in _video_classes:
        _video_classes[cls, base] = type(cls.__name__, (cls, base), {"__module__": cls.__module__})
    return _video_classes[cls, base]


def cancel_requested() -> bool:
    """Whether the user asked to stop, without acting on it: inside ComfyUI the request stays
    for the server to stop the prompt with."""
    management = _comfy("comfy.model_management")
    if management is not None:
        return management.processing_interrupted()
    return headless.interrupt.is_set()


def interrupted() -> bool:
    """True once the user asked to stop (ComfyUI's Cancel button, or the runner's Ctrl-C).

    Inside ComfyUI this raises ComfyUI's own interrupt exception, so the server reports the
    prompt as interrupted rather than failed.
    """
    management = _comfy("comfy.model_management")
    if management is not None:
        management.throw_exception_if_processing_interrupted()
        return False
    return headless.interrupt.is_set()
