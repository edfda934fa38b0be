"""Reproducible PSNR/SSIM of RT4KSR against bicubic on SR benchmark folders.

    python -m rt4ksr_nodes.evaluate --input testsets/Set5 testsets/Set14 --scale 2 3 \
        --degradation bicubic ntire23 --csv per_image.csv --json summary.json

Protocol (see docs/evaluation.md):
- An input is a folder of HR images, or a benchmark folder holding `HR/` and optionally
  `LR_bicubic_x{s}/` (LR files matched by stem, `baby.png` or `babyx2.png`).
- Generated LR: HR cropped (top-left) to a multiple of 2 * scale so the LR is even-sized, then
  MATLAB bicubic imresize, rounded once to uint8. Given LR: cropped to even size, HR to match.
- `ntire23` adds the NTIRE 2023 RTSR degradation on top: JPEG quality 90, Pillow's 4:2:0.
- Every method's output is rounded to 8 bits, then compared with HR after removing
  `--crop-border` pixels (default: the scale) per side; see `metrics` for PSNR/SSIM/Y.
- Bicubic baseline: torch bicubic (a = -0.75, align_corners=False) of the LR, clamped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from . import weights
from .fileio import atomic_write
from .imageio import IMAGE_EXTENSIONS
from .imresize import imresize_uint8
from .metrics import BT601_Y, UPSTREAM_Y, measure, to_uint8
from .model import load_model

DEGRADATIONS = ("bicubic", "ntire23")
JPEG_QUALITY = 90
JPEG_SUBSAMPLING = "4:2:0"  # what Pillow uses by default, hence what NTIRE's data script made
BICUBIC = "bicubic"
METRICS = ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y")
CSV_COLUMNS = ("set", "scale", "degradation", "method", "image", "hr_height", "hr_width",
               "lr_source") + METRICS


@dataclass(frozen=True)
class Benchmark:
    name: str
    hr_paths: tuple[Path, ...]
    root: Path | None  # folder that may hold LR_bicubic_x{s}/, None for a plain HR folder

    def lr_path(self, hr_path: Path, scale: int) -> Path | None:
        if self.root is None:
            return None
        folder = self.root / f"LR_bicubic_x{scale}"
        if not folder.is_dir():
            return None
        for stem in (hr_path.stem, f"{hr_path.stem}x{scale}"):
            for path in sorted(folder.glob(f"{stem}.*")):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    return path
        return None


def image_files(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))


def find_benchmark(path: Path) -> Benchmark:
    path = Path(path)
    if (path / "HR").is_dir():
        root, hr_dir = path, path / "HR"
    elif path.name == "HR":
        root, hr_dir = path.parent, path
    else:
        root, hr_dir = None, path
    if not hr_dir.is_dir():
        raise FileNotFoundError(f"{path}: not a folder")
    files = image_files(hr_dir)
    if not files:
        raise FileNotFoundError(f"{hr_dir}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return Benchmark((root or hr_dir).name, files, root)


def load_rgb8(path: Path) -> np.ndarray:
    """H x W x 3 uint8; grayscale becomes three equal channels, alpha is dropped."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as error:
        if str(path) in str(error):
            raise
        raise ValueError(f"{path}: cannot read image: {error}") from error


def jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Encode and decode in memory with Pillow's libjpeg."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def make_pair(
    hr: np.ndarray, scale: int, degradation: str, lr: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(LR, HR) with even LR sides and HR exactly scale x LR."""
    if lr is None:
        multiple = 2 * scale
        hr = hr[: hr.shape[0] // multiple * multiple, : hr.shape[1] // multiple * multiple]
        lr = imresize_uint8(hr, Fraction(1, scale))
    else:
        lr = lr[: lr.shape[0] // 2 * 2, : lr.shape[1] // 2 * 2]
        height, width = lr.shape[0] * scale, lr.shape[1] * scale
        if hr.shape[0] < height or hr.shape[1] < width:
            raise ValueError(f"LR {lr.shape[:2]} x{scale} is larger than HR {hr.shape[:2]}")
        hr = hr[:height, :width]
    if degradation == "ntire23":
        lr = jpeg(lr)
    return lr, hr


def _tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.tensor(image).permute(2, 0, 1)[None].to(device, torch.float32) / 255.0


def bicubic_upscale(lr: np.ndarray, scale: int, device: torch.device) -> np.ndarray:
    """The upstream baseline: torch bicubic, half-pixel centres, clamped, rounded to 8 bits."""
    up = F.interpolate(_tensor(lr, device), scale_factor=scale, mode="bicubic", align_corners=False)
    return to_uint8(up)


def model_upscale(model: torch.nn.Module, lr: np.ndarray, device: torch.device) -> np.ndarray:
    with torch.inference_mode():
        return to_uint8(model(_tensor(lr, device)))


def load_models(paths: list[Path] | None, scales: list[int] | None, device: torch.device):
    """{scale: [(label, model), ...]}: the given checkpoints, released ones for other scales."""
    models: dict[int, list] = {}
    for path in paths or ():
        model = load_model(path).to(device)
        models.setdefault(model.scale, []).append((Path(path).stem, model))
    if scales is None:
        scales = sorted(models) or [2, 3]
    stray = sorted(set(models) - set(scales))
    if stray:
        raise ValueError(f"--model gives x{stray[0]} but --scale asks for {scales}")
    for scale in scales:
        if scale not in models:
            release = weights.release_for_scale(scale)
            model = load_model(weights.ensure(release.name)).to(device)
            models[scale] = [(release.name, model)]
    return {scale: models[scale] for scale in scales}


def score_methods(lr, hr, scale, scale_models, border, upstream_y, device) -> list[tuple]:
    """[(method, scores)] for the bicubic baseline and every model of this scale."""
    outputs = [(BICUBIC, bicubic_upscale(lr, scale, device))]
    outputs += [(label, model_upscale(model, lr, device)) for label, model in scale_models]
    return [(method, measure(sr, hr, border, upstream_y)) for method, sr in outputs]


def evaluate(
    benchmarks: list[Benchmark],
    models: dict[int, list],
    degradations: list[str],
    crop_border: int | None = None,
    upstream_y: bool = False,
    device: torch.device = torch.device("cpu"),
    progress: bool = True,
) -> list[dict]:
    """One row per set x scale x degradation x method x image."""
    rows = []
    total = sum(len(b.hr_paths) for b in benchmarks) * len(models) * len(degradations)
    bar = tqdm(total=total, desc="evaluate", unit="img", file=sys.stderr, disable=not progress)
    with bar:
        for bench in benchmarks:
            for hr_path in bench.hr_paths:
                hr_full = load_rgb8(hr_path)
                for scale, scale_models in models.items():
                    lr_path = bench.lr_path(hr_path, scale)
                    given_lr = load_rgb8(lr_path) if lr_path else None
                    border = scale if crop_border is None else crop_border
                    for degradation in degradations:
                        lr, hr = make_pair(hr_full, scale, degradation, given_lr)
                        image = {
                            "set": bench.name, "scale": scale, "degradation": degradation,
                            "image": hr_path.stem, "hr_height": hr.shape[0],
                            "hr_width": hr.shape[1],
                            "lr_source": "file" if lr_path else "generated",
                        }
                        for method, scores in score_methods(
                            lr, hr, scale, scale_models, border, upstream_y, device
                        ):
                            rows.append({**image, "method": method, **scores})
                        bar.update()
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean of each metric over the images of every set x scale x degradation x method."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["set"], row["scale"], row["degradation"], row["method"])
        groups.setdefault(key, []).append(row)
    return [
        {"set": key[0], "scale": key[1], "degradation": key[2], "method": key[3],
         "images": len(group), **{m: float(np.mean([r[m] for r in group])) for m in METRICS}}
        for key, group in groups.items()
    ]


def format_table(summary: list[dict]) -> str:
    """A pipe table, readable on a terminal and valid Markdown."""
    lines = [
        "| Set | Scale | Degradation | Method | PSNR RGB | SSIM RGB | PSNR Y | SSIM Y | Images |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['set']} | x{s['scale']} | {s['degradation']} | {s['method']} | "
            f"{s['psnr_rgb']:.3f} | {s['ssim_rgb']:.4f} | {s['psnr_y']:.3f} | {s['ssim_y']:.4f} | "
            f"{s['images']} |"
        )
    return "\n".join(lines)


def settings(args, models: dict[int, list]) -> dict:
    y_weights = UPSTREAM_Y if args.upstream_y else BT601_Y
    y_name = "upstream: BT.601 BGR weights applied to RGB" if args.upstream_y else "BT.601"
    return {
        "inputs": [str(p) for p in args.input],
        "scales": list(models),
        "degradations": args.degradation,
        "crop_border": "scale" if args.crop_border is None else args.crop_border,
        "y": "16 + ({} R + {} G + {} B) / 255 on 0..255 ({})".format(*y_weights, y_name),
        "lr": "LR_bicubic_x{s} file where given (lr_source in the CSV), else MATLAB bicubic "
              "imresize of HR mod-cropped to 2*scale, float64, rounded once to uint8",
        "jpeg": {"quality": JPEG_QUALITY, "subsampling": JPEG_SUBSAMPLING, "encoder": "Pillow"},
        "models": {str(s): [m.description for _, m in ms] for s, ms in models.items()},
    }


def report_json(settings: dict, summary: list[dict]) -> str:
    """Settings and averages as strict JSON. PSNR is infinite where SR and HR are identical
    (and so is a mean over such images); JSON has no infinity, so it is written as null and
    the settings say so. The CSV keeps "inf", which CSV readers parse."""
    results = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
               for row in summary]
    settings = {**settings, "null": "PSNR of identical images (infinite)"}
    return json.dumps({"settings": settings, "results": results}, indent=2, allow_nan=False) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m rt4ksr_nodes.evaluate",
        description="PSNR/SSIM (RGB and Y) of RT4KSR and bicubic on SR benchmark folders.",
    )
    parser.add_argument("--input", type=Path, nargs="+", required=True,
                        help="HR folders, or benchmark folders holding HR/ [LR_bicubic_x{s}/]")
    parser.add_argument("--scale", type=int, nargs="+",
                        help="default: the scales of --model, else 2 3")
    parser.add_argument("--model", type=Path, nargs="+",
                        help="checkpoints to evaluate (default: the released model per scale)")
    parser.add_argument("--degradation", nargs="+", choices=DEGRADATIONS, default=["bicubic"],
                        help="bicubic: clean LR; ntire23: LR + JPEG q90 (default: bicubic)")
    parser.add_argument("--crop-border", type=int, default=None,
                        help="pixels ignored on each side (default: the scale)")
    parser.add_argument("--upstream-y", action="store_true",
                        help="upstream RT4KSR's Y: BT.601 weights in BGR order applied to RGB")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--csv", type=Path, help="write one row per image here")
    parser.add_argument("--json", type=Path, help="write settings and averages here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    for option, target in (("--csv", args.csv), ("--json", args.json)):
        if target is not None and target.is_dir():  # found out before the evaluation, not after
            parser.exit(2, f"error: {option} {target} is a folder; give a file name\n")
    device = torch.device(args.device)
    try:
        benchmarks = [find_benchmark(path) for path in args.input]
        models = load_models(args.model, args.scale, device)
        rows = evaluate(benchmarks, models, args.degradation, args.crop_border, args.upstream_y,
                        device, progress=not args.no_progress)
    except (OSError, ValueError, weights.WeightsError) as error:
        parser.exit(2, f"error: {error}\n")
    summary = summarize(rows)
    print(format_table(summary))
    if args.csv:
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        with atomic_write(args.csv) as out:
            out.write(table.getvalue().encode("utf-8"))
    if args.json:
        with atomic_write(args.json) as out:
            out.write(report_json(settings(args, models), summary).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
