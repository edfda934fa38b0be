"""Which RT4KSR models a user can pick, where each lives, and a cache of loaded ones.

Choices, in this order:
- the released models, by their file names ("rt4ksr_x2.pth"): a verified copy found in any
  models/rt4ksr/ or models/upscale_models/ folder (or the pack's weights folder) is used as it
  is, with no network access; otherwise the release is fetched, verified, on first use;
- the files in ComfyUI's models/rt4ksr/ folders. One under a released name whose content is not
  the release (another model, or a changed copy) is the user's own and is listed as
  "rt4ksr_x2.pth [not the release]", never replaced;
- RT4KSR files found in models/upscale_models/, listed as "upscale_models/<name>".
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path, PurePosixPath

from ..host import bridge
from ..files import weights
from ..files.paths import signature
from ..model import RT4KSR, load_model
from ..model.checkpoint import looks_like_rt4ksr

UPSCALE_PREFIX = bridge.UPSCALE_FOLDER + "/"
NOT_RELEASE = " [not the release]"
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


def _released() -> dict[str, weights.Release]:
    return {release.file: release for release in weights.releases().values()}


def release_folders() -> list[Path]:
    """Where a verified copy of a release is looked for (besides the pack's weights folder)."""
    return bridge.model_folders(bridge.MODEL_FOLDER) + bridge.model_folders(bridge.UPSCALE_FOLDER)


def choices() -> list[str]:
    released = _released()
    names = list(released)
    for folder in bridge.model_folders(bridge.MODEL_FOLDER):
        for name in _files(folder):
            mine = name in released and not weights.is_verified(released[name], folder / name)
            names.append(name + NOT_RELEASE if mine else name)
    for folder in bridge.model_folders(bridge.UPSCALE_FOLDER):
        names += [UPSCALE_PREFIX + name for name in _files(folder) if _is_rt4ksr(folder / name)]
    return list(dict.fromkeys(names))


def check_name(name: str) -> None:
    """Refuse names that are paths rather than entries of the list."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
        raise ValueError(f"model name {name!r} must be a plain name from the list, not a path")


def _download_progress():
    """A progress callback that opens the progress bar only once bytes arrive."""
    bar = []

    def report(done: int, total: int) -> None:
        if not bar:
            bar.append(bridge.progress())
        if bar[0] is not None:
            bar[0](done, total)

    return report


def resolve(name: str, *, fetch: bool = True) -> Path | None:
    """The file behind choice `name`. A released model is a verified copy found locally, else
    the release fetched first when `fetch` (ComfyUI's Cancel stops the download); None only when
    `fetch` is False and no verified copy is there yet."""
    check_name(name)
    released = _released()
    if name in released:
        return weights.ensure(
            released[name].name, fetch=fetch, search=release_folders(),
            cancelled=bridge.interrupted, on_progress=_download_progress(),
        )
    kind, relative, mine = bridge.MODEL_FOLDER, name, None
    if name.endswith(NOT_RELEASE) and name[: -len(NOT_RELEASE)] in released:
        relative = name[: -len(NOT_RELEASE)]
        mine = released[relative]
    elif name.startswith(UPSCALE_PREFIX):
        kind, relative = bridge.UPSCALE_FOLDER, name[len(UPSCALE_PREFIX):]
    folders = bridge.model_folders(kind)
    for folder in folders:
        path = folder / relative
        if path.is_file() and (mine is None or not weights.is_verified(mine, path)):
            return path
    searched = ", ".join(str(folder) for folder in folders) or "no folder"
    raise FileNotFoundError(f"RT4KSR model {name!r} not found (searched {searched})")


def problem(name: str) -> str | None:
    """Why `name` cannot be loaded, found before anything runs (None: it can)."""
    try:
        check_name(name)
    except ValueError as error:
        return str(error)
    released = _released()
    if name in released:
        return weights.source_problem(released[name].name, search=release_folders())
    listed = choices()
    if name not in listed:
        folders = ", ".join(str(f) for f in release_folders()) or "no folder"
        shown = ", ".join(listed) if len(listed) <= 20 else f"{len(listed)} models"
        return f"{name!r} is not one of the RT4KSR models found (searched {folders}): {shown}"
    return None


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
