"""Files named by workflows: kept inside their folder, and written so that a file under its
final name is always complete."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Iterator


def _read_umask() -> int:
    # Reading the umask means setting it; done once, at import, before any writer thread runs
    # (a briefly zero umask would let another thread's mkdir create a world-writable folder).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file to write `path`'s content into.

    The data goes to a temporary file beside `path`, is flushed to disk, given the permissions a
    plain `open()` would give (mkstemp's are owner-only), and renamed over `path` only when the
    block ends without an exception; otherwise the temporary file is removed. With
    `overwrite=False` an existing `path` is never replaced, even by a concurrent writer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), FILE_MODE)
        if overwrite:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # fails with FileExistsError instead of replacing
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


class UnsafePathError(ValueError):
    """A workflow asked for a file outside the folder it may use."""


def inside(base: str | os.PathLike, relative: str) -> Path:
    """`base / relative`, refused when `relative` is absolute (POSIX, or with a Windows drive) or
    leads out of `base` by `..` or through a symlink (both resolved before comparing)."""
    root = Path(base).resolve()
    if os.path.isabs(relative) or relative.startswith("/") or Path(relative).drive:
        raise UnsafePathError(f"{relative!r}: absolute paths are not allowed; give a path inside {root}")
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise UnsafePathError(f"{relative!r} leads outside {root}; this is not allowed")
    return target


def signature(path: str | os.PathLike) -> tuple:
    """Changes whenever the file at `path` is replaced or rewritten."""
    stat = os.stat(path)
    return (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


_hashes: dict[tuple, str] = {}  # signature -> SHA-256, for files already hashed in this process
_hashes_lock = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the file, hashed once per version of it in this process."""
    key = signature(path)
    with _hashes_lock:
        known = _hashes.get(key)
    if known is None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        known = digest.hexdigest()
        with _hashes_lock:
            _hashes[key] = known
    return known
