"""`python -m rt4ksr_nodes.bench encoders`: the encoders this pack writes with against maintained
alternatives, on one 4K frame: the x2 model's output for a synthetic 1080p frame (8 bits; the
16-bit rows add noise to the low byte, as a 16-bit source would have).

Each row: median CPU seconds of the whole process (an encoder's own threads counted), file size,
and whether the file decodes to the very samples encoded. Alternatives that are not installed
are left out (imagecodecs, opencv-python-headless, pyvips: pip install them to compare).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .runner import synthetic_frames
from ..engine import upscale
from ..files.images import _png16, _tiff16, read_image
from ..model import load_model

REPO = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per encoder (default 3)")
    parser.add_argument("--weights", default=str(REPO / "weights"), help="folder holding rt4ksr_x2.pth")


def _frame(weights: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as folder:
        synthetic_frames(Path(folder), 1, 1920, 1080)
        source = read_image(Path(folder) / "frame_0000.png").pixels
    model = load_model(Path(weights) / "rt4ksr_x2.pth")
    result = upscale(model, torch.from_numpy(source)[None], tile_size=0, precision="fp32", device="cpu")
    return np.rint(result[0].numpy() * 255).astype(np.uint8)


def _pillow(format: str, **options):
    def encode(samples):
        buffer = io.BytesIO()
        Image.fromarray(samples).save(buffer, format, **options)
        return buffer.getvalue()
    return encode


def _tifffile(samples):
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, samples, photometric="rgb", metadata=None, software=False)
    return buffer.getvalue()


def _encoders(wide: bool) -> list[tuple[str, object]]:
    """(label, encode(samples) -> bytes) for 8-bit (or 16-bit: `wide`) RGB samples."""
    rows = []
    if wide:
        rows += [(f"PNG, this pack (stdlib zlib) level {level}", lambda s, level=level: _png16(s, None, {}, level))
                 for level in (1, 4)]
        rows.append(("TIFF uncompressed, this pack", lambda s: b"".join(_tiff16([(s, None)]))))
        if importlib.util.find_spec("tifffile"):
            rows.append(("TIFF uncompressed, tifffile", _tifffile))
    else:
        rows += [(f"PNG, Pillow level {level}", _pillow("PNG", compress_level=level)) for level in (1, 4, 6)]
        rows.append(("WebP lossless, Pillow (this pack: method 0)", _pillow("WEBP", lossless=True, method=0,
                                                                        quality=0, exact=True)))
        rows.append(("JPEG q95, Pillow (lossy)", _pillow("JPEG", quality=95)))
    if importlib.util.find_spec("imagecodecs"):
        import imagecodecs

        rows += [(f"PNG, imagecodecs (libpng) level {level}",
                  lambda s, level=level: bytes(imagecodecs.png_encode(s, level=level))) for level in (1, 4)]
    if importlib.util.find_spec("cv2"):
        import cv2

        rows += [(f"PNG, OpenCV level {level}", lambda s, level=level: cv2.imencode(
            ".png", np.ascontiguousarray(s[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, level])[1].tobytes())
            for level in (1, 4)]
    if importlib.util.find_spec("pyvips"):
        import pyvips

        rows += [(f"PNG, pyvips level {level} (adaptive filter)", lambda s, level=level: pyvips.Image.new_from_array(s)
                  .copy(interpretation="rgb16" if s.dtype == np.uint16 else "srgb")
                  .pngsave_buffer(compression=level, filter="all")) for level in (1, 4)]
    return rows


def _decoded(data: bytes, wide: bool) -> np.ndarray:
    if not wide:
        return np.asarray(Image.open(io.BytesIO(data)))
    with tempfile.NamedTemporaryFile(suffix=".tif" if data[:2] == b"II" else ".png") as file:
        file.write(data)
        file.flush()
        return np.rint(read_image(file.name).pixels * 65535).astype(np.uint16)


def main(args: argparse.Namespace) -> None:
    frame = _frame(args.weights)
    noise = np.random.default_rng(0).integers(0, 256, frame.shape, dtype=np.uint16)
    print(f"one {frame.shape[1]}x{frame.shape[0]} frame (x2 model output), median of {args.repeat} runs, "
          "CPU seconds of the whole process")
    print("| samples | encoder | CPU s | MB | same samples |")
    print("|---|---|---:|---:|---|")
    for wide, samples in ((False, frame), (True, frame.astype(np.uint16) * 256 + noise)):
        for label, encode in _encoders(wide):
            data = encode(samples)  # warm-up, and the file checked
            times = []
            for _ in range(args.repeat):
                start = time.process_time()
                encode(samples)
                times.append(time.process_time() - start)
            same = "lossy" if "lossy" in label else str(np.array_equal(_decoded(data, wide), samples))
            print(f"| {16 if wide else 8}-bit | {label} | {statistics.median(times):.2f} | {len(data) / 1e6:.1f} "
                  f"| {same} |", flush=True)
