"""scripts/make_figures.py: the committed README figure regenerates pixel for pixel, and its PSNR
labels are what `python -m rt4ksr_nodes.evaluate` prints for the same crops."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
from PIL import Image

from ground_truth import ROOT, shared_path
from rt4ksr_nodes.evaluate import cli as evaluate

FIGURES = ROOT / "docs" / "img"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "scripts" / "make_figures.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up there
    spec.loader.exec_module(script)
    out = tmp_path_factory.mktemp("figures")
    assert script.main(["--photo-dir", str(shared_path("images", "Set5")), "--out-dir", str(out / "img"),
                        "--crops-dir", str(out / "crops")]) == 0
    return out


def test_figure_regenerates_pixel_identical(made):
    with Image.open(FIGURES / "comparison.png") as committed, Image.open(made / "img" / "comparison.png") as fresh:
        assert committed.size == fresh.size
        differ = np.any(np.asarray(committed) != np.asarray(fresh), axis=-1)
        assert not differ.any(), (
            f"{differ.sum()} pixels differ (rows {np.nonzero(differ.any(axis=1))[0][[0, -1]]}): "
            "docs/img/comparison.png is stale, run scripts/make_figures.py and commit the result"
        )
    assert json.loads((made / "img" / "comparison.json").read_text()) == \
        json.loads((FIGURES / "comparison.json").read_text())


def test_labels_equal_evaluate_on_the_same_crops(made, capsys):
    numbers = json.loads((FIGURES / "comparison.json").read_text())
    folders = [str(made / "crops" / stem) for stem in numbers]
    assert evaluate.main(["--input", *folders, "--scale", "2", "3", "--no-progress"]) == 0
    printed = {}
    for line in capsys.readouterr().out.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        method = "bicubic" if cells[3] == "bicubic" else "RT4KSR"
        printed[(cells[0], cells[1], method)] = cells[6]  # the PSNR Y column
    labels = {
        (stem, scale, method): f"{crop[scale][method]:.3f}"
        for stem, crop in numbers.items() for scale in ("x2", "x3") for method in ("bicubic", "RT4KSR")
    }
    assert printed == labels


def test_input_panel_psnr_by_hand(made):
    """The nearest-neighbour panel's label, recomputed here: MATLAB bicubic LR of the crop,
    pixel repetition, BT.601 Y, scale pixels shaved, 10 log10(255^2 / MSE)."""
    numbers = json.loads((FIGURES / "comparison.json").read_text())
    for stem, crop in numbers.items():
        hr = np.asarray(Image.open(made / "crops" / stem / f"{stem}.png"), dtype=np.float64)
        for scale in (2, 3):
            lr = evaluate.make_pair(hr.astype(np.uint8), scale)[0]
            up = np.kron(lr.astype(np.float64), np.ones((scale, scale, 1)))
            y = lambda im: 16 + (65.481 * im[..., 0] + 128.553 * im[..., 1] + 24.966 * im[..., 2]) / 255
            error = (y(up) - y(hr))[scale:-scale, scale:-scale]
            expected = 10 * math.log10(255**2 / np.mean(error**2))
            assert crop[f"x{scale}"]["input"] == pytest.approx(expected, abs=1e-9)
