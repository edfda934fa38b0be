"""workflows/inputs/dusk_1280x720.mp4 and dusk_1920x1080.mp4: the video examples' inputs.

    python scripts/make_example_clips.py

Twelve frames at 24 fps (half a second) of a slow zoom into workflows/inputs/dusk_1920x1080.png,
H.264 (CRF 28, yuv420p, BT.709 tags) with a quiet 440 Hz AAC tone, written with PyAV; the same
PyAV/FFmpeg writes the same bytes.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

INPUTS = Path(__file__).resolve().parents[1] / "workflows" / "inputs"
FRAMES, RATE, SAMPLE_RATE = 12, 24, 48000


def frames(size: tuple[int, int]) -> list[np.ndarray]:
    with Image.open(INPUTS / "dusk_1920x1080.png") as image:
        picture = image.convert("RGB")
    width, height = picture.size
    views = []
    for index in range(FRAMES):
        inset = 4 * index  # the zoom: a smaller window each frame, same aspect
        box = (inset * 16 // 9, inset, width - inset * 16 // 9, height - inset)
        views.append(np.asarray(picture.resize(size, Image.Resampling.LANCZOS, box=box)))
    return views


def write(path: Path, size: tuple[int, int]) -> None:
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as output:
        video = output.add_stream("libx264", rate=RATE, options={"crf": "28", "preset": "slow", "threads": "1"})
        video.width, video.height, video.pix_fmt = *size, "yuv420p"
        video.codec_context.colorspace = video.codec_context.color_primaries = video.codec_context.color_trc = 1
        audio = output.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        for index, pixels in enumerate(frames(size)):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(
                format="yuv420p", dst_colorspace=av.video.reformatter.Colorspace.ITU709)
            frame.pts, frame.time_base = index, Fraction(1, RATE)
            output.mux(video.encode(frame))
        output.mux(video.encode(None))
        samples = SAMPLE_RATE * FRAMES // RATE
        tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(samples) / SAMPLE_RATE)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="flt", layout="mono")
            chunk.sample_rate, chunk.pts = SAMPLE_RATE, start
            output.mux(audio.encode(chunk))
        output.mux(audio.encode(None))


if __name__ == "__main__":
    for size in ((1280, 720), (1920, 1080)):
        write(INPUTS / f"dusk_{size[0]}x{size[1]}.mp4", size)
