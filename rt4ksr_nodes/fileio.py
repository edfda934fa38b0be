"""Files named by workflows: kept inside their folder, and written so that a file under its
final name is always complete."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO, Iterator

try:
    import fcntl
except ImportError:  # Windows: an open file cannot be deleted there, which protects it instead
    fcntl = None


def _read_umask() -> int:
    # Reading the umask means setting it; done once, at import, before any writer thread runs
    # (a briefly zero umask would let another thread's mkdir create a world-writable folder).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()
# Temporary files of atomic_write: ".<name>.<random>.rt4ksr.part" beside the final file.
TEMP_SUFFIX = ".rt4ksr.part"
# A temporary file is locked from right after its creation; this covers that instant.
_TEMP_GRACE_S = 2.0


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file to write `path`'s content into.

    The data goes to a temporary file beside `path`, is flushed to disk, given the permissions a
    plain `open()` would give (mkstemp's are owner-only), and renamed over `path` only when the
    block ends without an exception; otherwise the temporary file is removed. With
    `overwrite=False` an existing `path` is never replaced, even by a concurrent writer.
    The temporary file stays locked while it is written, so that one left by a killed process
    can be told apart and removed (`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released by the OS however the process ends
        with os.fdopen(handle, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), FILE_MODE)
            if fcntl is not None:  # published while still locked
                _publish(temp, path, overwrite)
        if fcntl is None:  # Windows renames only closed files
            _publish(temp, path, overwrite)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _publish(temp: str, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temp, path)
    else:
        os.link(temp, path)  # fails with FileExistsError instead of replacing


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that atomic_write left in `folder` when its process was killed
    (kill -9, power loss); those of writers still running are locked and kept. Returns them."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no such folder yet, or not readable: nothing of ours there
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if time.time() - entry.stat().st_mtime < _TEMP_GRACE_S:
                continue
            if fcntl is None:
                os.unlink(entry.path)  # refused while the writer holds it open
            else:
                with open(entry.path, "rb") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while written
                    os.unlink(entry.path)
        except OSError:  # being written (locked), or already gone
            continue
        removed.append(Path(entry.path))
    return removed


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why files cannot be created in `folder` (created first if need be), or None if they can."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot write into {folder}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write into {folder}: {existing} is not writable"
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that the same clean-up runs."""

    exit_code = 128 + signal.SIGTERM  # 143, what shells report for a process ended by SIGTERM


def stopped_by(stop: KeyboardInterrupt) -> tuple[str, int]:
    """What stopped a command, and its exit status: 128 + the signal number, as shells give."""
    if isinstance(stop, Terminated):
        return "SIGTERM", stop.exit_code
    return "Ctrl-C", 128 + signal.SIGINT


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM (schedulers, containers, `kill`) raises `Terminated`; in the
    main thread only, as Python delivers signals there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
