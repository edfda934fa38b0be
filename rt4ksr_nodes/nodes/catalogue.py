"""Which RT4KSR models a user can pick, where each lives, and a cache of loaded ones.

Choices, in this order: the released models (always the SHA-256-verified release, fetched on
first use into the pack's weights folder), the files in ComfyUI's models/rt4ksr/ folders, and
RT4KSR files found in models/upscale_models/ (listed as "upscale_models/<name>").
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path, PurePosixPath

from .. import comfy_bridge as bridge
from .. import weights
from ..model import RT4KSR, load_model
from ..fileio import signature
from ..model.checkpoint import looks_like_rt4ksr

UPSCALE_PREFIX = bridge.UPSCALE_FOLDER + "/"
CACHE_SIZE = 4

# ComfyUI lists choices on its server thread while the executor thread loads models.
_lock = threading.Lock()
_loaded: OrderedDict[tuple, RT4KSR] = OrderedDict()
_detected: dict[str, tuple[tuple, bool]] = {}  # path -> (file signature, is RT4KSR)


def _files(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.suffix.lower() in bridge.MODEL_EXTENSIONS and path.is_file()
    )


def _is_rt4ksr(path: Path) -> bool:
    version = signature(path)
    with _lock:
        known = _detected.get(str(path))
    if known is None or known[0] != version:
        known = (version, looks_like_rt4ksr(path))
        with _lock:
            _detected[str(path)] = known
    return known[1]


def choices() -> list[str]:
    names = [release.file for release in weights.releases().values()]
    for folder in bridge.model_folders(bridge.MODEL_FOLDER):
        names += _files(folder)
    for folder in bridge.model_folders(bridge.UPSCALE_FOLDER):
        names += [UPSCALE_PREFIX + name for name in _files(folder) if _is_rt4ksr(folder / name)]
    return list(dict.fromkeys(names))


def resolve(name: str, *, fetch: bool = True) -> Path | None:
    """The file behind choice `name`. A released model is the verified release, fetched first
    when absent and `fetch`; None only when `fetch` is False and it is not there yet."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
        raise ValueError(f"model name {name!r} must be a plain name from the list, not a path")
    released = {release.file: release.name for release in weights.releases().values()}
    if name in released:
        return weights.ensure(released[name], fetch=fetch)
    kind, relative = bridge.MODEL_FOLDER, name
    if name.startswith(UPSCALE_PREFIX):
        kind, relative = bridge.UPSCALE_FOLDER, name[len(UPSCALE_PREFIX):]
    folders = bridge.model_folders(kind)
    for folder in folders:
        if (folder / relative).is_file():
            return folder / relative
    searched = ", ".join(str(folder) for folder in folders) or "no folder"
    raise FileNotFoundError(f"RT4KSR model {name!r} not found (searched {searched})")


def change_signature(name: str) -> str:
    """Changes whenever the file behind `name` does (for ComfyUI's IS_CHANGED); never fetches."""
    try:
        path = resolve(name, fetch=False)
    except (OSError, ValueError):
        return name
    return name if path is None else repr(signature(path))


def load(name: str, reparameterize: bool) -> RT4KSR:
    """The model behind `name`, loaded once and reused until its file changes."""
    path = resolve(name)
    key = (*signature(path), reparameterize)
    with _lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
    model = load_model(path, reparameterize=reparameterize)
    with _lock:
        _loaded[key] = model
        while len(_loaded) > CACHE_SIZE:
            _loaded.popitem(last=False)
    return model
