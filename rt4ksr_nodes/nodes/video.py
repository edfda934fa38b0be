"""Upscale Video (RT4KSR): a lazy VIDEO in, a lazy VIDEO out.

The node only describes the job. The VIDEO it returns knows its size and duration from the
source's headers; the work happens when a consumer asks for it: core Save Video calls
save_to, which streams decode -> model -> encode through the video pipeline (rt4ksr_nodes/video),
with flat memory whatever the clip's length; get_components, for nodes that want frames,
materialises the clip (warned, refused past the memory available).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from ..host import bridge
from ..engine import memory_needed
from ..engine.device import available_ram
from ..engine.memory import USABLE
from .common import CATEGORY, check_tile, model_input, precision_input, tile_input
from .upscale import compute_device
from .video_values import AUTO, FileVideo, choice, source_path, tags

log = logging.getLogger(__name__)
NAME = "Upscale Video (RT4KSR)"
# What FFmpeg calls the container save_to writes by default (mp4), as a reader reports it.
MP4_FORMAT_NAME = "mov,mp4,m4a,3gp,3g2,mj2"
# Materialising: the decoded 8-bit frames and the float32 IMAGE, per sample.
BYTES_PER_SAMPLE = 5
DEFAULT_CRF = -1  # the codec's own transparent default


def codecs() -> dict:
    """The pipeline's codecs (PyAV is imported here, on first use)."""
    from ..video.detect import INSTALL_HINT, available

    if not available():
        raise ImportError(f"{NAME}: {INSTALL_HINT}")
    from ..video.codecs import CODECS

    return CODECS


class UpscaledVideo:
    """`source` (any VIDEO) upscaled by `model`, computed when saved or asked for frames."""

    def __init__(self, source, model, tile_size: int, precision: str, codec: str, crf: int | None):
        self.source, self.model = source, model
        self.tile_size, self.precision, self.codec, self.crf = tile_size, precision, codec, crf

    # -- what is known without decoding -----------------------------------------------------------

    def get_dimensions(self) -> tuple[int, int]:
        """The source's size (from its headers) times the scale, cropped to even sides where
        the codec's chroma subsampling needs it (the pipeline does the same)."""
        width, height = (side * self.model.scale for side in self.source.get_dimensions())
        codec = codecs()[self.codec]
        if codec.rgb:
            return width, height
        return width - width % 2, height - (0 if codec.name == "prores" else height % 2)

    def get_duration(self) -> float:
        return self.source.get_duration()

    def get_container_format(self) -> str:
        return MP4_FORMAT_NAME

    # -- the work ------------------------------------------------------------------------------------

    def save_to(self, path, format=AUTO, codec=AUTO, metadata: dict | None = None) -> None:
        """Stream the upscaled clip into `path` (a file name or a writable binary file).

        format: auto (the file name's extension, mp4 for a file object) or mp4; codec: auto (the
        node's choice) or h264 (H.264 whatever the node chose). metadata (core Save Video's
        prompt and workflow) goes into the container's tags, beside the source's.
        """
        format, codec = choice(format), choice(codec)
        if format not in (AUTO, "mp4"):
            raise ValueError(f"{NAME}: format {format!r} is not supported; use auto or mp4")
        if codec not in (AUTO, "h264"):
            raise ValueError(f"{NAME}: codec {codec!r} is not supported; use auto or h264")
        name, crf = self.codec, self.crf
        if codec == "h264" and not name.startswith("h264"):
            name, crf = "h264", None
        to_file = isinstance(path, (str, os.PathLike))
        if to_file and format == "mp4" and Path(path).suffix.lower() != ".mp4":
            raise ValueError(f"{NAME}: format mp4 asked for {path}, whose extension is not .mp4")
        with tempfile.TemporaryDirectory(prefix="rt4ksr-video-") as workdir:
            destination = Path(path) if to_file else Path(workdir) / "upscaled.mp4"
            # Segments (the runner's --segment, --resume, --backend ray) for the user's file only:
            # a temporary render is on this machine alone and never resumed.
            self._render(self._source_file(Path(workdir)), destination, name, crf, metadata,
                         bridge.video_segments() if to_file else {})
            if not to_file:
                with open(destination, "rb") as encoded:
                    shutil.copyfileobj(encoded, path)

    def get_stream_source(self) -> io.BytesIO:
        """The clip encoded as the node says, in memory (it is compressed)."""
        buffer = io.BytesIO()
        self.save_to(buffer)
        buffer.seek(0)
        return buffer

    def get_components(self):
        """Every upscaled frame as an IMAGE batch, with the source's audio and frame rate.

        This holds the whole clip in memory (5 bytes a sample while decoding): warned, and
        refused before any work when that is more than 80% of the memory available.
        """
        from ..video.source import probe

        with tempfile.TemporaryDirectory(prefix="rt4ksr-video-") as workdir:
            source = self._source_file(Path(workdir))
            info = probe(source)
            width, height = self.get_dimensions()
            frames = info.frames or 0
            needed = frames * width * height * 3 * BYTES_PER_SAMPLE
            available = available_ram()
            size = f"{frames} frames of {width}x{height}"
            if needed > USABLE * available:  # the engine's share of free memory
                raise MemoryError(
                    f"{NAME}: the node after it asks for every frame at once ({size}: "
                    f"{needed / 2**30:.1f} GiB), more than the {available / 2**30:.1f} GiB of memory "
                    "available; connect the VIDEO to Save Video instead, which streams, or shorten the clip"
                )
            log.warning("%s: the node after it asks for every frame at once: %s, %.2f GiB in memory "
                        "(Save Video streams instead)", NAME, size, needed / 2**30)
            lossless = Path(workdir) / "upscaled.mp4"
            self._render(source, lossless, "ffv1", None, None)
            return FileVideo(lossless).get_components()

    def _source_file(self, workdir: Path) -> Path:
        """A file with the source clip: a chained upscale is rendered losslessly first."""
        if isinstance(self.source, UpscaledVideo):
            path = workdir / "chained.mp4"
            self.source._render(self.source._source_file(workdir), path, "ffv1", None, None)
            return path
        return source_path(self.source, workdir)

    def _render(self, source: Path, destination: Path, codec: str, crf: int | None, metadata: dict | None,
                segments: dict | None = None) -> None:
        """The one call into the video pipeline, with ComfyUI's device, progress bar and Cancel.
        segments: upscale_video's segment, resume, run_segments (default: one pass)."""
        from ..video.errors import VideoError
        from ..video.pipeline import upscale_video

        segments = segments or {}
        # Segments run elsewhere (Ray) pick their device there: this machine's may not exist there.
        device = bridge.torch_device() if segments.get("run_segments") else self._device()
        bar = bridge.progress()
        try:
            upscale_video(
                self.model, source, destination, codec=codec, crf=crf, metadata=tags(metadata, keep_text=True),
                tile_size=self.tile_size, precision=self.precision,
                # Replaces what save_to was pointed at (Save Video's temporary file among them),
                # never an earlier run's segments: only --resume decides about those.
                device=device, overwrite=True, restart=False,
                progress=(lambda done, total: bar(done, total or done)) if bar else None,
                cancel=bridge.interrupted, warn=lambda message: log.warning("%s: %s", NAME, message),
                **segments,
            )
        except VideoError as error:  # raised by Save Video's call: say which node's settings
            raise VideoError(f"{NAME}: {error}") from error

    def _device(self) -> torch.device:
        """ComfyUI's compute device, with room made there for one frame's upscale (the frames
        come back to the CPU for the encoder)."""
        device = compute_device()
        width, height = self.source.get_dimensions()
        frame = torch.empty((1, height, width, 3), device="meta")  # only its size is read
        with warnings.catch_warnings():  # the engine itself warns about bf16, once
            warnings.simplefilter("ignore")
            needed = memory_needed(self.model, frame, precision=self.precision, device=device,
                                   output_device="cpu")
        bridge.free_memory(needed, device)
        return device


def check_crf(codec: str, crf: int) -> bool | str:
    """crf against the codec's range: -1 (the codec's default) always; codecs without CRF
    (lossless ffv1, ProRes profiles) take only -1."""
    entry = codecs().get(codec)
    if entry is None:
        return f"unknown codec {codec!r}; choose one of {', '.join(codecs())}"
    if crf == DEFAULT_CRF:
        return True
    if entry.crf is None:
        return f"crf does not apply to {codec} (use -1): it is " + (
            "lossless" if entry.rgb else "set by its profile")
    low, high = entry.crf[1:]
    return True if low <= crf <= high else f"crf for {codec} must be -1 or {low} to {high}, got {crf}"


class RT4KSRUpscaleVideo:
    DESCRIPTION = (
        "Upscales a video by the model's factor, streamed: nothing is decoded here; Save Video "
        "runs decode, model and encode frame by frame, so memory stays flat however long the "
        "clip. Audio and subtitles are copied, timing and colour kept."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("VIDEO",)
    RETURN_NAMES = ("VIDEO",)
    OUTPUT_TOOLTIPS = ("The upscaled video, computed when it is saved (connect it to Save Video).",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": model_input(),
                "video": ("VIDEO", {"tooltip": "The video to upscale, e.g. from Load Video or Create Video."}),
                "tile_size": tile_input(),
                "precision": precision_input(),
                "codec": (list(codecs()), {"default": "h264", "tooltip": "Encoder of the saved video: "
                          "h264 plays everywhere; hevc, av1 and vp9 are smaller; ffv1 is lossless; "
                          "prores needs a .mov file; *_nvenc use an NVIDIA GPU's encoder."}),
                "crf": ("INT", {"default": DEFAULT_CRF, "min": -1, "max": 63, "tooltip": "Quality: -1 = "
                        "the codec's default, which looks transparent (h264 18, hevc 20, av1 and vp9 24); "
                        "lower is better and bigger; 0 with h264 or hevc is lossless. Not for ffv1 or prores."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, tile_size=None, codec=None, crf=None):
        tile = check_tile(tile_size)
        if tile is not True or codec is None or crf is None:
            return tile
        return check_crf(codec, crf)

    def upscale(self, model, video, tile_size, precision, codec, crf):
        crf = None if crf == DEFAULT_CRF else crf
        return (bridge.video_class(UpscaledVideo)(video, model, tile_size, precision, codec, crf),)
