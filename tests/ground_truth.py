"""Ground truth for the tests: the real released checkpoints and benchmark images, read in place.

`../shared` (or $RT4KSR_SHARED) must exist: tests fail, rather than skip, without ground truth.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RT4KSR_SHARED", ROOT.parent / "shared"))
SCALES = (2, 3)


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"ground truth missing: {path} (set RT4KSR_SHARED to the shared folder)")
    return path


def checkpoint_path(scale: int) -> Path:
    return shared_path("weights", f"rt4ksr_x{scale}.pth")


def sha256_of(path: Path) -> str:
    """The file's SHA-256 by hashlib in one read: independent of the package's hashing."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def image_paths(set_name: str) -> list[Path]:
    return sorted(shared_path("images", set_name).glob("*.png"))


def load_rgb(path: Path, crop: int | None = None) -> torch.Tensor:
    """1 x 3 x H x W float32 in [0, 1]; `crop` takes a centred square of that (even) size."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    if crop:
        top = (array.shape[0] - crop) // 2
        left = (array.shape[1] - crop) // 2
        array = array[top : top + crop, left : left + crop]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)
