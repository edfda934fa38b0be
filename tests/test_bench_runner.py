"""python -m rt4ksr_nodes.bench runner: its workflow is valid, and a tiny run does every image on
both paths, writes the same correct pictures from both, and reports positive rates."""

import re

import numpy as np
import torch
from PIL import Image

from ground_truth import shared_path
from engine_helpers import reference
from runner_helpers import folders, write_png  # noqa: F401 - fixture
from rt4ksr_nodes import bench, load_model
from rt4ksr_nodes.bench_runner import folder_prompt
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
    bench.main(["runner", "--images", "2", "--size", "64x48", "--device", "cpu",
                "--workdir", str(work)])
    out = capsys.readouterr().out
    assert "2 synthetic 64x48 PNG frames" in out and "images done: runner 2, CLI 2" in out
    rates = dict(re.findall(r"^\| ([^|]+) \| ([0-9.]+) \|", out, re.MULTILINE))
    assert set(rates) == {"headless runner, folder batch", "quick-inference CLI per file"}
    assert all(float(rate) > 0 for rate in rates.values())

    inputs = sorted((work / "input" / "frames").glob("*.png"))
    runner_outputs = sorted((work / "runner_out").rglob("*.png"))
    cli_outputs = sorted((work / "cli_out").glob("*.png"))
    assert [p.name for p in runner_outputs] == [p.name for p in cli_outputs] == [
        f"{p.stem}--2x.png" for p in inputs
    ]
    model = load_model(shared_path("weights", "rt4ksr_x2.pth"))
    for source, from_runner, from_cli in zip(inputs, runner_outputs, cli_outputs):
        upscaled = _pixels(from_runner)
        assert upscaled.shape == (96, 128, 3)
        assert np.array_equal(upscaled, _pixels(from_cli))
        frame = torch.from_numpy(_pixels(source)).float().div(255).unsqueeze(0)
        expected = (reference(model, frame)[0] * 255).round().to(torch.uint8).numpy()
        assert np.abs(upscaled.astype(int) - expected).max() <= 1
