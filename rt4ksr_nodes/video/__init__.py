"""Video: a streaming decode -> upscale -> encode pipeline over the engine, on PyAV (FFmpeg's
libraries; the optional `video` extra). Importing this package needs PyAV; `available()` and
`is_video()` in .detect do not."""

from .codecs import CODECS, CONTAINERS, EncodeOptions
from .errors import VideoError, VideoWarning
from .pipeline import VideoResult, upscale_video
from .source import VIDEO_EXTENSIONS, VideoSource, is_video, probe

__all__ = [
    "CODECS",
    "CONTAINERS",
    "EncodeOptions",
    "VIDEO_EXTENSIONS",
    "VideoError",
    "VideoResult",
    "VideoSource",
    "VideoWarning",
    "is_video",
    "probe",
    "upscale_video",
]
