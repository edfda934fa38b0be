"""An independent minimal 16-bit PNG codec for tests (filter types None and Up only)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def write(path: Path, samples: np.ndarray) -> None:
    """16-bit RGB or RGBA samples (H x W x C uint16), unfiltered rows."""
    height, width, channels = samples.shape
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 16, 6 if channels == 4 else 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def read(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", None
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 16 and interlace == 0
    channels = {2: 3, 6: 4}[colour_type]
    stride = width * channels * 2
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.uint8)
    for y in range(height):
        kind, row = rows[y, 0], rows[y, 1:]
        assert kind in (0, 2), f"filter {kind} not handled by the test decoder"
        out[y] = row + out[y - 1] if kind == 2 and y else row
    return out.view(">u2").reshape(height, width, channels).astype(np.uint16)
