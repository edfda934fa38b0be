"""The README's before/after figure: docs/img/comparison.png and its numbers, comparison.json.

    python scripts/make_figures.py                       # rewrites docs/img/comparison.{png,json}
    python scripts/make_figures.py --crops-dir crops     # also writes the original crops
    python -m rt4ksr_nodes.evaluate --input crops/photo_butterfly crops/art_dusk --scale 2 3

Two 96x96 crops, a photograph (Set5 `butterfly.png`, read in place from the benchmark images;
the crop file is not committed) and flat-colour art (the repository's own example input
`workflows/inputs/dusk_1920x1080.png`), each taken at x2 and x3 through the evaluation's own
protocol (`rt4ksr_nodes.evaluate.cli`): MATLAB-bicubic LR of the crop, torch bicubic and the released
RT4KSR, 8-bit outputs, PSNR on BT.601 Y with the scale as crop border. So the bicubic and RT4KSR
labels are the PSNR Y that `evaluate` prints for the crops written by `--crops-dir` (one folder,
hence one table row, per crop). The input panel is the LR enlarged by pixel repetition (nearest
neighbour), measured the same way.

Deterministic: fixed crops, the float32 model on the CPU on one thread, Pillow's built-in font.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from rt4ksr_nodes.evaluate.cli import bicubic_upscale, load_models, load_rgb8, make_pair, model_upscale
from rt4ksr_nodes.files.paths import atomic_write
from rt4ksr_nodes.evaluate.metrics import measure

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RT4KSR_SHARED", ROOT.parent / "shared"))
OUT_DIR = ROOT / "docs" / "img"
SCALES = (2, 3)
SIZE = 96  # crop side: a multiple of 2 x 2 and 2 x 3, so evaluate's mod-crop keeps all of it
ZOOM = 2  # every panel is shown enlarged by pixel repetition, so single pixels stay visible
GAP = 6
FONT = 14
INK, PAPER, MUTED = (20, 20, 20), (255, 255, 255), (110, 110, 110)
COLUMNS = ("input", "bicubic", "RT4KSR", "original")


@dataclass(frozen=True)
class Crop:
    stem: str  # the crop's file name, and its image name in evaluate's CSV
    title: str
    path: Path
    sha256: str  # of the source file: another copy of it would give other figures
    x: int
    y: int


def crops(photo_dir: Path) -> tuple[Crop, ...]:
    return (
        Crop("photo_butterfly", "Photograph (Set5 butterfly)", photo_dir / "butterfly.png",
             "487d841c9dbc46c7ab496c319ec1f13268de7ea7e02f94ae18781ca86a5abd0d", 100, 20),
        Crop("art_dusk", "Flat-colour art (workflows/inputs/dusk_1920x1080.png)",
             ROOT / "workflows" / "inputs" / "dusk_1920x1080.png",
             "f70c6a2a8f133281e3192ee9167db5849e124458df4612984736347f787e57a8", 60, 40),
    )


def read_crop(crop: Crop) -> np.ndarray:
    if not crop.path.is_file():
        raise FileNotFoundError(f"{crop.path}: missing (--photo-dir names the folder holding "
                                "Set5's butterfly.png)")
    digest = hashlib.sha256(crop.path.read_bytes()).hexdigest()
    if digest != crop.sha256:
        raise ValueError(f"{crop.path}: SHA-256 {digest}, expected {crop.sha256}: not the image "
                         "the figure is made from")
    return load_rgb8(crop.path)[crop.y:crop.y + SIZE, crop.x:crop.x + SIZE]


def nearest(lr: np.ndarray, factor: int) -> np.ndarray:
    return lr.repeat(factor, axis=0).repeat(factor, axis=1)


def panels(hr: np.ndarray, scale: int, model) -> tuple[int, list[tuple[str, np.ndarray, float | None]]]:
    """(LR side, [(column, image, PSNR-Y or None)]) for one crop at one scale."""
    device = torch.device("cpu")
    lr, hr = make_pair(hr, scale)
    outputs = {
        "input": nearest(lr, scale),
        "bicubic": bicubic_upscale(lr, scale, device),
        "RT4KSR": model_upscale(model, lr, device),
    }
    scored = [(name, image, measure(image, hr, scale)["psnr_y"]) for name, image in outputs.items()]
    return lr.shape[0], scored + [("original", hr, None)]


def caption(name: str, psnr_y: float | None) -> str:
    if name == "original":
        return "original"
    return f"{'input, nearest' if name == 'input' else name}: {psnr_y:.3f} dB"


def render(rows: list[tuple[str, list[tuple[str, np.ndarray]]]]) -> Image.Image:
    """rows: (row title, [(caption, image)]) -> one white figure."""
    font = ImageFont.load_default(size=FONT)
    side = SIZE * ZOOM
    line = FONT + 5
    row_height = line + side + line + GAP
    width = len(COLUMNS) * side + (len(COLUMNS) + 1) * GAP
    figure = Image.new("RGB", (width, GAP + len(rows) * row_height), PAPER)
    draw = ImageDraw.Draw(figure)
    top = GAP
    for title, cells in rows:
        draw.text((GAP, top), title, fill=INK, font=font)
        for column, (text, image) in enumerate(cells):
            left = GAP + column * (side + GAP)
            figure.paste(Image.fromarray(nearest(image, ZOOM)), (left, top + line))
            draw.text((left, top + line + side + 2), text, fill=MUTED if column == 3 else INK, font=font)
        top += row_height
    return figure


def make(photo_dir: Path, crops_dir: Path | None = None) -> tuple[Image.Image, dict]:
    """The figure and {crop stem: {"x2": {column: PSNR-Y}, ...}, ...} (unrounded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order, whatever the machine's cores
    try:
        return _make(photo_dir, crops_dir)
    finally:
        torch.set_num_threads(threads)


def _make(photo_dir: Path, crops_dir: Path | None) -> tuple[Image.Image, dict]:
    models = {scale: entries[0][1] for scale, entries in load_models(None, list(SCALES),
                                                                     torch.device("cpu")).items()}
    rows, numbers = [], {}
    for crop in crops(photo_dir):
        hr = read_crop(crop)
        if crops_dir is not None:
            folder = crops_dir / crop.stem
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(hr).save(folder / f"{crop.stem}.png")
        numbers[crop.stem] = {"source": f"{crop.path.name} at x={crop.x}, y={crop.y}, {SIZE}x{SIZE}"}
        for scale in SCALES:
            lr_side, scored = panels(hr, scale, models[scale])
            numbers[crop.stem][f"x{scale}"] = {name: value for name, _, value in scored if value is not None}
            cells = [(caption(name, value), image) for name, image, value in scored]
            rows.append((f"{crop.title}, x{scale} from {lr_side}x{lr_side} (PSNR on Y vs the original)",
                         cells))
    return render(rows), numbers


def save(figure: Image.Image, numbers: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "comparison.png") as out:
        figure.save(out, "PNG", optimize=True)
    with atomic_write(out_dir / "comparison.json") as out:
        out.write((json.dumps(numbers, indent=2) + "\n").encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo-dir", type=Path, default=SHARED / "images" / "Set5",
                        help="the folder holding Set5's butterfly.png (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="default: %(default)s")
    parser.add_argument("--crops-dir", type=Path, help="also write the original crops here")
    args = parser.parse_args(argv)
    try:
        figure, numbers = make(args.photo_dir, args.crops_dir)
    except (OSError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    save(figure, numbers, args.out_dir)
    print(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
