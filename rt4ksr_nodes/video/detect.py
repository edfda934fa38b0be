"""Is this input a video? Answered without importing PyAV when it is not installed."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

# Extensions a folder listing takes as videos (a file named directly is recognised by content).
VIDEO_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mxf", ".ts", ".mts", ".m2ts", ".flv",
    ".wmv", ".mpg", ".mpeg", ".ogv", ".3gp",
)
# 18: the first PyAV that writes a display matrix (rotation); ComfyUI itself asks for >= 14.2.
MIN_PYAV = 18
# Output extensions and the muxer each selects.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
INSTALL_HINT = f"video needs PyAV >= {MIN_PYAV}: pip install 'rt4ksr-nodes[video]' (or pip install 'av>={MIN_PYAV}')"


@lru_cache(maxsize=None)
def available() -> bool:
    """Whether a recent enough PyAV is installed."""
    try:
        import av
    except ImportError:
        return False
    return int(av.__version__.split(".")[0]) >= MIN_PYAV


def image_demuxer(name: str) -> bool:
    """FFmpeg's demuxers for images, still or animated (png_pipe, image2, gif, apng, ...): the
    image path reads those."""
    return name in ("image2", "gif", "apng") or name.endswith("_pipe")


def is_video(path: str | os.PathLike) -> bool:
    """True when FFmpeg opens the file as a container with a moving-picture stream, whatever its
    name; without PyAV, when the extension is a video one (the run then says what to install)."""
    if not available():
        return Path(path).suffix.lower() in VIDEO_EXTENSIONS
    import av

    try:
        with av.open(os.fspath(path)) as container:
            return bool(container.streams.video) and not image_demuxer(container.format.name)
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        return False
