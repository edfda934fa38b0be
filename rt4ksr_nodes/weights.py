"""The released checkpoints: manifest, verified download, verified offline install.

A file only ever appears under its final name after its size and SHA-256 matched the manifest:
everything is written to a temporary file in the destination folder and renamed atomically.

Environment:
- RT4KSR_WEIGHTS_DIR     where checkpoints are kept (default: the repository's `weights/`).
- RT4KSR_WEIGHTS_FROM    a local folder holding the checkpoint files (offline install).
- RT4KSR_WEIGHTS_MIRROR  a base URL that replaces the upstream download location.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .fileio import atomic_write, file_sha256

MANIFEST_PATH = Path(__file__).resolve().parents[1] / "weights" / "manifest.json"
CHUNK = 1 << 16


class WeightsError(RuntimeError):
    """A checkpoint could not be obtained or failed verification; says what to do next."""


@dataclass(frozen=True)
class Release:
    name: str
    file: str
    scale: int
    url: str
    sha256: str
    size: int


def releases() -> dict[str, Release]:
    if not MANIFEST_PATH.is_file():
        raise WeightsError(
            f"{MANIFEST_PATH} is missing: rt4ksr_nodes runs from its repository folder (a ComfyUI "
            "custom_nodes clone or `pip install -e .`), which holds weights/manifest.json"
        )
    manifest = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    return {entry["name"]: Release(**entry) for entry in manifest["models"]}


def release_for_scale(scale: int) -> Release:
    for release in releases().values():
        if release.scale == scale:
            return release
    raise WeightsError(f"no released RT4KSR model for x{scale}; released: x2, x3")


def weights_dir() -> Path:
    return Path(os.environ.get("RT4KSR_WEIGHTS_DIR") or MANIFEST_PATH.parent)


def _offline_hint(release: Release) -> str:
    return (
        f"To install offline, download {release.url} on a connected machine, copy "
        f"{release.file} into a folder here and run `python install.py --from FOLDER` "
        "(or set RT4KSR_WEIGHTS_FROM=FOLDER)."
    )


def _write_verified(release: Release, chunks: Iterable[bytes], dest: Path, origin: str) -> Path:
    """Stream `chunks` to `dest`; the file appears only if size and hash match the manifest."""
    digest, size = hashlib.sha256(), 0
    with atomic_write(dest) as out:
        for chunk in chunks:
            size += len(chunk)
            if size > release.size:
                break
            digest.update(chunk)
            out.write(chunk)
        if size != release.size:
            got = f"more than {release.size}" if size > release.size else size
            raise WeightsError(
                f"{origin}: got {got} bytes, the manifest expects {release.size} for "
                f"{release.file}; nothing was installed."
            )
        if digest.hexdigest() != release.sha256:
            raise WeightsError(
                f"{origin}: SHA-256 {digest.hexdigest()} does not match the manifest's "
                f"{release.sha256} for {release.file}; the file was discarded and nothing was "
                "installed. " + _offline_hint(release)
            )
    return dest


def is_verified(release: Release, path: Path) -> bool:
    """Whether `path` is `release` (fileio.file_sha256 hashes each version of a file once)."""
    return path.is_file() and file_sha256(path) == release.sha256


def install_from(release: Release, source_dir: Path, dest: Path) -> Path:
    source = Path(source_dir) / release.file
    if not source.is_file():
        raise WeightsError(
            f"offline source {source_dir} has no {release.file} (expected the released file, "
            f"SHA-256 {release.sha256})"
        )
    with open(source, "rb") as handle:
        chunks = iter(lambda: handle.read(CHUNK), b"")
        return _write_verified(release, chunks, dest, str(source))


class _Retryable(Exception):
    pass


def download(
    release: Release,
    dest: Path,
    *,
    url: str | None = None,
    attempts: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    import requests
    from tqdm import tqdm

    url = url or release.url
    last_error = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with requests.get(url, stream=True, timeout=timeout) as response:
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Retryable(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise WeightsError(
                        f"{url}: HTTP {response.status_code}; cannot download {release.file}. "
                        + _offline_hint(release)
                    )
                with tqdm(
                    total=release.size, unit="B", unit_scale=True, desc=release.file,
                    disable=not progress, leave=False,
                ) as bar:
                    chunks = (
                        bar.update(len(chunk)) or chunk
                        for chunk in response.iter_content(CHUNK)
                    )
                    return _write_verified(release, chunks, dest, url)
        # Retried: 429/5xx, refused or timed-out connections, a stream that broke off mid-file.
        except (_Retryable, requests.RequestException) as error:
            last_error = str(error) or type(error).__name__
    raise WeightsError(
        f"{url}: could not download {release.file} after {attempts} attempts ({last_error}). "
        + _offline_hint(release)
    )


def ensure(
    name: str,
    *,
    fetch: bool = True,
    dest_dir: Path | None = None,
    source_dir: Path | None = None,
    mirror: str | None = None,
    progress: bool = True,
    **download_options,
) -> Path | None:
    """Path of the verified checkpoint `name`, installing it first if needed.

    The source is the offline folder when one is given (argument or RT4KSR_WEIGHTS_FROM),
    otherwise the download URL (or the mirror). A corrupt file in the way is replaced. With
    `fetch=False` nothing is installed or removed: None unless a verified file is there.
    """
    known = releases()
    if name not in known:
        raise WeightsError(f"unknown released model {name!r}; known: {', '.join(known)}")
    release = known[name]
    dest = Path(dest_dir or weights_dir()) / release.file
    if is_verified(release, dest):
        return dest
    if not fetch:
        return None
    source_dir = source_dir or os.environ.get("RT4KSR_WEIGHTS_FROM")
    if source_dir:
        return install_from(release, Path(source_dir), dest)
    mirror = mirror or os.environ.get("RT4KSR_WEIGHTS_MIRROR")
    url = f"{mirror.rstrip('/')}/{release.file}" if mirror else None
    return download(release, dest, url=url, progress=progress, **download_options)
