"""python -m rt4ksr_nodes.bench runner: its workflow is valid, and a tiny run does every image on
both paths and in each format, writes the same correct pictures from all, and reports the stage
costs, rates and efficiencies consistently."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from ground_truth import shared_path
from engine_helpers import reference
from runner_helpers import folders, write_png  # noqa: F401 - fixture
from rt4ksr_nodes import load_model
from rt4ksr_nodes.bench import cli as bench
from rt4ksr_nodes.bench.runner import folder_prompt
from rt4ksr_nodes.runner import registry
from rt4ksr_nodes.runner.validate import validate


def test_folder_workflow_is_valid(folders):
    write_png(folders[0] / "frames" / "f.png")  # the benchmark writes its frames there
    assert validate(folder_prompt(), registry.node_classes()) == []


def _pixels(path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def test_tiny_run_upscales_every_image_alike_on_both_paths(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(shared_path("weights")))
    work = tmp_path / "work"
    bench.main(["runner", "--images", "2", "--size", "64x48", "--device", "cpu", "--cli",
                "--formats", "png:1,webp lossless", "--workdir", str(work)])
    out = capsys.readouterr().out
    assert "2 synthetic 64x48 PNG frames" in out and "quick-inference CLI per file: 2 images" in out
    stages = dict(re.findall(r"(decode|model|quantise|png level 1|webp lossless) ([0-9.]+)", out.splitlines()[1]))
    assert set(stages) == {"decode", "model", "quantise", "png level 1", "webp lossless"}
    rows = re.findall(r"^\| (png level 1|webp lossless) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) "
                      r"\| \*\*([0-9.]+)\*\* \|", out, re.MULTILINE)
    assert [row[0] for row in rows] == ["png level 1", "webp lossless"]
    for label, encode, total, rate, ideal, efficiency in rows:
        assert float(encode) == pytest.approx(float(stages[label]), abs=1e-3)
        common = sum(float(stages[k]) for k in ("decode", "model", "quantise"))
        assert float(total) == pytest.approx(common + float(encode), abs=2e-3)
        assert float(rate) > 0 and float(efficiency) == pytest.approx(float(rate) / float(ideal), abs=0.02)

    inputs = sorted((work / "input" / "frames").glob("*.png"))
    runner_png = sorted((work / "runner_png_1").rglob("*.png"))
    runner_webp = sorted((work / "runner_webp_lossless_4").rglob("*.webp"))
    cli_outputs = sorted((work / "cli_out").glob("*.png"))
    assert [p.name for p in runner_png] == [p.name for p in cli_outputs] == [f"{p.stem}--2x.png" for p in inputs]
    assert [p.name for p in runner_webp] == [f"{p.stem}--2x.webp" for p in inputs]
    model = load_model(shared_path("weights", "rt4ksr_x2.pth"))
    for source, png, webp, from_cli in zip(inputs, runner_png, runner_webp, cli_outputs):
        upscaled = _pixels(png)
        assert upscaled.shape == (96, 128, 3)
        assert np.array_equal(upscaled, _pixels(from_cli)) and np.array_equal(upscaled, _pixels(webp))
        frame = torch.from_numpy(_pixels(source)).float().div(255).unsqueeze(0)
        expected = (reference(model, frame)[0] * 255).round().to(torch.uint8).numpy()
        assert np.abs(upscaled.astype(int) - expected).max() <= 1
