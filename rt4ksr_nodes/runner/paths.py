"""Keeping file names supplied by workflows inside their folder."""

from __future__ import annotations

import os
from pathlib import Path


class UnsafePathError(ValueError):
    """A workflow asked for a file outside the folder it may use."""


def inside(base: Path, relative: str) -> Path:
    """`base / relative`, refused when `relative` is absolute or leads out of `base` by `..` or
    through a symlink (both resolved before comparing)."""
    root = Path(base).resolve()
    if os.path.isabs(relative) or Path(relative).drive:
        raise UnsafePathError(f"{relative!r}: absolute paths are not allowed; give a path inside {root}")
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise UnsafePathError(f"{relative!r} leads outside {root}; this is not allowed")
    return target
