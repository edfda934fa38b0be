"""Video: a streaming decode -> upscale -> encode pipeline over the engine, on PyAV (FFmpeg's
libraries; the optional `video` extra). Only what needs PyAV imports it, on first use, so that
detection and the CLI's arguments work without it. Imports engine and files; the nodes, the
runner and the CLI build on it."""

from importlib import import_module

from .detect import CONTAINERS, VIDEO_EXTENSIONS, available, is_video

_LAZY = {
    "CODECS": ".codecs",
    "EncodeOptions": ".codecs",
    "VideoError": ".errors",
    "VideoWarning": ".errors",
    "VideoResult": ".pipeline",
    "upscale_video": ".pipeline",
    "VideoSource": ".source",
    "probe": ".source",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CONTAINERS", "VIDEO_EXTENSIONS", "available", "is_video", *_LAZY]
