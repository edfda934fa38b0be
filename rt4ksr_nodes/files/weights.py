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
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .paths import atomic_write, file_sha256

MANIFEST_PATH = Path(__file__).resolve().parents[2] / "weights" / "manifest.json"
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
        "(or set RT4KSR_WEIGHTS_FROM=FOLDER), or copy it into any of the folders searched."
    )


def _url(release: Release, mirror: str | None = None) -> str:
    """The release's download URL, or its place on the mirror (argument or RT4KSR_WEIGHTS_MIRROR)."""
    mirror = mirror or os.environ.get("RT4KSR_WEIGHTS_MIRROR")
    return f"{mirror.rstrip('/')}/{release.file}" if mirror else release.url


def _candidates(release: Release, dest_dir: Path, search: Iterable[Path]) -> list[Path]:
    """Where a verified copy of `release` may already be: the install folder, then `search`."""
    return list(dict.fromkeys([Path(dest_dir) / release.file, *(Path(f) / release.file for f in search)]))


def _local_report(release: Release, candidates: list[Path]) -> str:
    """Which folders were searched for a verified copy, and which same-named files failed."""
    failed = [
        f"{path} failed its SHA-256 check (it is {file_sha256(path)}, the release is "
        f"{release.sha256}; changed on disk, or another model under the released name)"
        for path in candidates
        if path.is_file()
    ]
    if not candidates:
        return ""
    folders = ", ".join(dict.fromkeys(str(path.parent) for path in candidates))
    return f"Searched for a verified local copy in: {folders}." + "".join(f" {f}." for f in failed)


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
    """Whether `path` is `release` (paths.file_sha256 hashes each version of a file once)."""
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


class DownloadCancelled(WeightsError):
    """The user asked to stop (the runner's Ctrl-C) while a checkpoint was being fetched."""


class _Retryable(Exception):
    pass


POLL = 0.1  # seconds between two looks at `cancelled` while waiting on the network


def _wait(seconds: float, cancelled: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if cancelled():
            raise DownloadCancelled("cancelled while waiting to retry the download; nothing was installed")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(POLL, left))


def _fetch(url: str, timeout: float, cancelled: Callable[[], bool]) -> Iterator[tuple[str, object]]:
    """("status", code), then ("chunk", bytes)... of a GET, then ("end", None) or ("error", exc).

    requests blocks for up to `timeout` on a silent server, so it runs in a worker thread and
    this generator looks at `cancelled` every POLL seconds; a cancelled worker is abandoned and
    ends at its own timeout."""
    import requests

    events: queue.Queue = queue.Queue(maxsize=16)
    stop = threading.Event()

    def put(event) -> bool:
        while not stop.is_set():
            try:
                events.put(event, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            with requests.get(url, stream=True, timeout=timeout) as response:
                if not put(("status", response.status_code)) or response.status_code != 200:
                    return
                for chunk in response.iter_content(CHUNK):
                    if not put(("chunk", chunk)):
                        return
            put(("end", None))
        except Exception as error:  # noqa: BLE001 - handed to the caller to classify
            put(("error", error))

    threading.Thread(target=work, name="rt4ksr-download", daemon=True).start()
    try:
        while True:
            if cancelled():
                raise DownloadCancelled(f"{url}: download cancelled; nothing was installed")
            try:
                event = events.get(timeout=POLL)
            except queue.Empty:
                continue
            yield event
            if event[0] in ("end", "error"):
                return
    finally:
        stop.set()


def download(
    release: Release,
    dest: Path,
    *,
    url: str | None = None,
    attempts: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Path:
    """Fetch `release` into `dest`, verified. `cancelled()` is asked between chunks, while the
    server is silent and between attempts (True: DownloadCancelled); `on_progress(done, total)`
    gets the bytes received (else a tqdm bar on stderr unless `progress` is False)."""
    import requests
    from tqdm import tqdm

    url = url or release.url
    cancelled = cancelled or (lambda: False)
    last_error = ""
    for attempt in range(attempts):
        if attempt:
            _wait(backoff * 2 ** (attempt - 1), cancelled)
        events = _fetch(url, timeout, cancelled)
        try:
            kind, value = next(events)
            if kind == "error":
                raise value
            if value == 429 or value >= 500:
                raise _Retryable(f"HTTP {value}")
            if value != 200:
                raise WeightsError(
                    f"{url}: HTTP {value}; cannot download {release.file}. " + _offline_hint(release)
                )
            with tqdm(
                total=release.size, unit="B", unit_scale=True, desc=release.file,
                disable=not progress or on_progress is not None, leave=False,
            ) as bar:
                report = on_progress or (lambda done, total: bar.update(done - bar.n))

                def chunks() -> Iterator[bytes]:
                    done = 0
                    for kind, value in events:
                        if kind == "error":
                            raise value
                        if kind == "end":
                            return
                        done += len(value)
                        report(min(done, release.size), release.size)
                        yield value

                return _write_verified(release, chunks(), dest, url)
        # Retried: 429/5xx, refused or timed-out connections, a stream that broke off mid-file.
        except (_Retryable, requests.RequestException) as error:
            last_error = str(error) or type(error).__name__
        finally:
            events.close()
    raise WeightsError(
        f"{url}: could not download {release.file} after {attempts} attempts ({last_error}). "
        + _offline_hint(release)
    )


def ensure(
    name: str,
    *,
    fetch: bool = True,
    dest_dir: Path | None = None,
    search: Iterable[Path] = (),
    source_dir: Path | None = None,
    mirror: str | None = None,
    **download_options,
) -> Path | None:
    """Path of the verified checkpoint `name`, installing it into `dest_dir` first if needed.

    A verified copy in `dest_dir` or in any `search` folder is used as it is, with no network
    access. Otherwise the source is the offline folder when one is given (argument or
    RT4KSR_WEIGHTS_FROM), else the download URL (or the mirror). A file under the released name
    that is not the release is never replaced (it is someone's model): installing is refused
    with a message saying so. With `fetch=False` nothing is installed: None unless a verified
    copy is there.
    """
    known = releases()
    if name not in known:
        raise WeightsError(f"unknown released model {name!r}; known: {', '.join(known)}")
    release = known[name]
    dest = Path(dest_dir or weights_dir()) / release.file
    candidates = _candidates(release, dest.parent, search)
    for path in candidates:
        if is_verified(release, path):
            return path
    if not fetch:
        return None
    if dest.exists():
        message = (
            f"{dest} is not the released {release.file}: it failed its SHA-256 check (it is "
            f"{file_sha256(dest)}, the release is {release.sha256}; changed on disk, or another "
            "model saved under the released name). It is never overwritten: move or delete it to "
            "install the release there. " + _local_report(release, candidates[1:])
        )
        raise WeightsError(message.rstrip())
    source_dir = source_dir or os.environ.get("RT4KSR_WEIGHTS_FROM")
    try:
        if source_dir:
            return install_from(release, Path(source_dir), dest)
        return download(release, dest, url=_url(release, mirror), **download_options)
    except DownloadCancelled:
        raise
    except WeightsError as error:
        raise WeightsError(f"{error} {_local_report(release, candidates)}") from None


def source_problem(name: str, *, search: Iterable[Path] = (), timeout: float = 5.0) -> str | None:
    """Why `ensure(name, search=search)` could not obtain the release, found without installing
    anything (a HEAD request at most, only when no verified copy is present); None if it can."""
    release = releases()[name]
    candidates = _candidates(release, weights_dir(), search)
    if any(is_verified(release, path) for path in candidates):
        return None
    if candidates[0].exists():
        return (
            f"{candidates[0]} is not the released {release.file} (it failed its SHA-256 check) "
            "and is never overwritten: move or delete it to install the release there"
        )
    source_dir = os.environ.get("RT4KSR_WEIGHTS_FROM")
    if source_dir:
        if is_verified(release, Path(source_dir) / release.file):
            return None
        reason = f"the offline source RT4KSR_WEIGHTS_FROM={source_dir} has no verified {release.file}"
    else:
        import requests

        url = _url(release)
        try:
            status = requests.head(url, timeout=timeout, allow_redirects=True).status_code
        except requests.RequestException as error:
            status = f"unreachable ({type(error).__name__})"
        if status == 200:
            return None
        reason = f"{url} is {status if isinstance(status, str) else f'answering HTTP {status}'}"
    return (
        f"the released {release.file} is not here and cannot be fetched: {reason}. "
        f"{_local_report(release, candidates)} {_offline_hint(release)}"
    )
