"""An independent minimal 16-bit RGB(A) TIFF codec for tests: deflate-compressed writing (as
image editors save, optionally with the horizontal predictor) and uncompressed reading."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SHORT, LONG = 3, 4


def write_deflate(path: Path, samples: np.ndarray, predictor: int = 1) -> None:
    height, width, channels = samples.shape
    values = samples.astype(np.int64)
    if predictor == 2:  # each sample stored as the difference from its left neighbour
        values[:, 1:] = (values[:, 1:] - values[:, :-1]) % 65536
    strip = zlib.compress(values.astype("<u2").tobytes())
    bits = struct.pack("<" + "H" * channels, *[16] * channels)
    entries = {
        256: (LONG, [width]), 257: (LONG, [height]), 258: (SHORT, None), 259: (SHORT, [8]),
        262: (SHORT, [2]), 273: (LONG, None), 277: (SHORT, [channels]), 278: (LONG, [height]),
        279: (LONG, [len(strip)]), 284: (SHORT, [1]), 317: (SHORT, [predictor]),
    }
    if channels == 4:
        entries[338] = (SHORT, [2])
    strip_at, bits_at = 8, 8 + len(strip) + len(strip) % 2
    ifd_at = bits_at + len(bits)
    ifd = struct.pack("<H", len(entries))
    for tag in sorted(entries):
        kind, values_ = entries[tag]
        if tag == 258:
            ifd += struct.pack("<HHII", tag, SHORT, channels, bits_at)
        elif tag == 273:
            ifd += struct.pack("<HHII", tag, LONG, 1, strip_at)
        elif kind == SHORT:
            ifd += struct.pack("<HHIHH", tag, SHORT, 1, values_[0], 0)
        else:
            ifd += struct.pack("<HHII", tag, LONG, 1, values_[0])
    ifd += struct.pack("<I", 0)
    body = strip + b"\0" * (len(strip) % 2) + bits
    path.write_bytes(b"II*\0" + struct.pack("<I", ifd_at) + body + ifd)


def read_uncompressed(path: Path) -> np.ndarray:
    """Samples of a little-endian, uncompressed, chunky 16-bit TIFF (one or more strips)."""
    data = path.read_bytes()
    assert data[:4] == b"II*\0"
    (ifd_at,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd_at)
    tags = {}
    for index in range(count):
        tag, kind, number, value = struct.unpack_from("<HHII", data, ifd_at + 2 + 12 * index)
        if kind not in (SHORT, LONG):  # e.g. the ICC profile (bytes): not needed here
            continue
        size = 2 if kind == SHORT else 4
        if number * size <= 4:
            raw = struct.pack("<I", value)[: number * size]
        else:
            raw = data[value : value + number * size]
        tags[tag] = struct.unpack("<" + ("H" if kind == SHORT else "I") * number, raw)
    assert tags[259] == (1,) and set(tags[258]) == {16}
    width, height, channels = tags[256][0], tags[257][0], tags[277][0]
    strips = b"".join(data[o : o + n] for o, n in zip(tags[273], tags[279]))
    return np.frombuffer(strips, dtype="<u2").reshape(height, width, channels)
