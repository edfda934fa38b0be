"""Files named by workflows: kept inside their folder, and written so that a file under its
final name is always complete."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def _read_umask() -> int:
    # Reading the umask means setting it; done once, at import, before any writer thread runs
    # (a briefly zero umask would let another thread's mkdir create a world-writable folder).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()


# Temporary files end with this (and start with "."), so that listings skip them and a later
# run can tell this pack's leftovers from anything else.
TEMP_SUFFIX = ".rt4ksr.part"
NAME_MAX = 255  # bytes in one file name (Linux, macOS; Windows counts UTF-16 units)
PATH_MAX = 4096  # bytes in a path (Linux)
_TEMP_NAME = re.compile(r"\..+" + re.escape(TEMP_SUFFIX) + r"(\.[^.]+)?", re.DOTALL)
STALE_AFTER = 1.0  # seconds: an unlocked temp file this old is a killed writer's leftover


@contextlib.contextmanager
def _temporary(folder: Path, name: str, publish: Callable[[str], None], to_path: bool = False) -> Iterator:
    """Yield a temporary file in `folder` (with `to_path`, its path, for writers that open
    files by name; it ends with `name`'s extension, from which muxers pick the format); when
    the block ends without an exception the file is flushed to disk, given the permissions a
    plain `open()` would give (mkstemp's are owner-only) and handed to `publish(temp path)`.
    The temporary file is removed in any case (unless `publish` moved it). While it is open it
    is locked, which tells `remove_stale_temps` that its writer is alive (the system drops the
    lock of a killed one)."""
    folder.mkdir(parents=True, exist_ok=True)
    # A short prefix: a 255-byte final name must still leave room for the temporary name.
    extension = Path(name).suffix[:16] if to_path else ""
    handle, temp = tempfile.mkstemp(prefix=f".{name[:100]}.", suffix=TEMP_SUFFIX + extension, dir=folder)
    try:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        with os.fdopen(handle, "wb") as out:
            yield temp if to_path else out
            out.flush()
            os.fsync(out.fileno())  # the file's data, whoever wrote it
            os.fchmod(out.fileno(), FILE_MODE)
            if fcntl is not None:  # published while still locked
                publish(temp)
        if fcntl is None:  # Windows renames only closed files
            publish(temp)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, overwrite: bool = True, to_path: bool = False) -> Iterator:
    """Yield a binary file to write `path`'s content into (with `to_path`, a temporary path with
    `path`'s extension to write to); it appears under `path` only when the block ends without
    an exception, complete. With `overwrite=False` an existing `path` is never replaced, even by
    a concurrent writer (FileExistsError)."""
    path = Path(path)

    def publish(temp: str) -> None:
        if overwrite:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # atomic: fails with FileExistsError instead of replacing

    with _temporary(path.parent, path.name, publish, to_path) as out:
        yield out


def write_first_free(names: Iterable[Path], write: Callable, *, to_path: bool = False) -> Path:
    """Write a file through `write(out)` once (with `to_path`, `write(temporary path)`, the path
    ending with the names' extension), then give it the first of `names` (all in one folder)
    that does not exist yet, atomically: concurrent writers never take the same name and never
    replace each other's file. Returns the name taken."""
    names = iter(names)
    first = next(names)
    taken: list[Path] = []

    def publish(temp: str) -> None:
        for name in itertools.chain([first], names):
            try:
                os.link(temp, name)
            except FileExistsError:
                continue
            taken.append(name)
            return
        raise FileExistsError(f"{first.parent}: every name from {first.name} on is taken")

    with _temporary(first.parent, first.name, publish, to_path) as out:
        write(out)
    return taken[0]


def is_temporary(name: str) -> bool:
    """Whether `name` is one of this pack's temporary files: hidden, ending with TEMP_SUFFIX
    or with TEMP_SUFFIX and the extension a muxer needed (to_path)."""
    return _TEMP_NAME.fullmatch(name) is not None


def remove_stale_temps(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Remove the temporary files that killed writers of this pack left in `folder` (and its
    subfolders when `recursive`); those of writers still at work are locked and kept. Returns
    them. Without file locks (Windows) nothing is removed."""
    removed = []
    if fcntl is None:
        return removed
    walk = os.walk(folder) if recursive else [next(os.walk(folder), (folder, [], []))]
    for root, _, files in walk:
        for name in files:
            if not is_temporary(name):
                continue
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as handle:
                    if time.time() - os.fstat(handle.fileno()).st_mtime < STALE_AFTER:
                        continue  # perhaps created a moment ago and not locked yet
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os.unlink(path)
            except OSError:  # locked (a writer is at work), or already gone
                continue
            removed.append(Path(path))
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


def name_problem(path: str | os.PathLike) -> str | None:
    """Why `path` could not be created because it or a name in it is too long, or None."""
    size = len(os.fsencode(path))
    if size > PATH_MAX:
        return f"the path {brief(str(path))} is {size} bytes long; paths can have at most {PATH_MAX}"
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            return (f"the name {brief(part)} is {len(os.fsencode(part))} bytes long; file and folder "
                    f"names can have at most {NAME_MAX}")
    return None


def brief(value, limit: int = 120) -> str:
    """repr(value), shortened: error messages echo what the user gave without echoing
    megabytes of it."""
    return shorten(repr(value), limit)


def shorten(text: str, limit: int = 2000) -> str:
    """`text`, cut in the middle when longer than `limit` characters."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} ...[{len(text) - 2 * half} characters left out]... {text[-half:]}"


class UnsafePathError(ValueError):
    """A workflow asked for a file outside the folder it may use, or named one that no file
    system can hold."""


def inside(base: str | os.PathLike, relative: str) -> Path:
    """`base / relative`, refused when `relative` is absolute (POSIX, or with a Windows drive),
    leads out of `base` by `..` or through a symlink (both resolved before comparing), or holds
    a name too long to create."""
    root = Path(base).resolve()
    too_long = name_problem(relative)
    if too_long:
        raise UnsafePathError(too_long)
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
