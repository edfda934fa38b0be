"""python -m rt4ksr_nodes.bench runner: its workflow is valid, and a tiny run does every image on
both paths and in each format, writes the same correct pictures from all, and reports the stage
costs, rates and efficiencies (steady state and whole run) consistently."""

import os
import re
import time

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


class _Timed:
    """Times each Runner.run(), each item's end within it (the `item` events) and the engine
    calls, apart from the benchmark's own clocks: what its figures are checked against."""

    def __init__(self, monkeypatch):
        self.runs, self.engine = [], 0.0
        timed = self
        from rt4ksr_nodes.bench import runner as bench_runner
        from rt4ksr_nodes.nodes import upscale as upscale_node

        class Runner(bench_runner.Runner):
            def __init__(self, *args, on_event=None, **kwargs):
                self.marks = []

                def marked(event):
                    if event.get("event") == "item":
                        self.marks.append((time.perf_counter(), time.process_time()))
                    on_event(event)

                super().__init__(*args, on_event=marked, **kwargs)

            def run(self):
                engine, start, cpu = timed.engine, time.perf_counter(), time.process_time()
                summary = super().run()
                timed.runs.append((summary.done, time.perf_counter() - start, time.process_time() - cpu,
                                   timed.engine - engine, start, self.marks))
                return summary

        original = upscale_node.upscale

        def upscale(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timed.engine += time.perf_counter() - start

        monkeypatch.setattr(bench_runner, "Runner", Runner)
        monkeypatch.setattr(upscale_node, "upscale", upscale)


_NUMBER = r"([0-9.]+)"
_ROW = re.compile(r"^\| (png level 1|webp lossless) \| " + r" \| ".join(
    [_NUMBER] * 4 + [r"\*\*([0-9.]+)\*\*", f"{_NUMBER} x {_NUMBER}", "([0-9.]+|n/a)", "([0-9.]+|n/a)"]
    + [_NUMBER] * 3 + ["([0-9]+)%"]) + r" \|$", re.MULTILINE)


def test_tiny_run_upscales_every_image_alike_on_both_paths(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(shared_path("weights")))
    work = tmp_path / "work"
    timed = _Timed(monkeypatch)
    # One writer: a run holds 2 decoded + 1 waiting to be queued + 1 in the graph + 1 writing +
    # 2 waiting for the writer = 7 images at once, so 24 leave a steady state of 10.
    bench.main(["runner", "--images", "24", "--size", "64x48", "--device", "cpu", "--cli", "--jobs", "1",
                "--formats", "png:1,webp lossless", "--workdir", str(work)])
    out = capsys.readouterr().out
    assert "24 synthetic 64x48 PNG frames" in out and "quick-inference CLI per file: 4 images" in out
    assert "after the first and up to the last 7 (what a run holds at once)" in out
    stages = dict(re.findall(r"(decode|model|quantise|png level 1|webp lossless) ([0-9.]+)", out.splitlines()[1]))
    assert set(stages) == {"decode", "model", "quantise", "png level 1", "webp lossless"}
    rows = _ROW.findall(out)
    assert [row[0] for row in rows] == ["png level 1", "webp lossless"]
    # The formula, against figures taken apart from the benchmark's: the images and
    # the wall and CPU time of each run and of its steady state, the engine's time, and the
    # cores this process may use.
    cores = len(os.sched_getaffinity(0))
    assert len(timed.runs) == 2
    for row, run in zip(rows, timed.runs):
        label, encode, total, ideal, rate, efficiency, work_used, cores_used, others, left = row[:10]
        whole_rate, whole_efficiency, first, busy = row[10:]
        done, wall, cpu, engine, start, marks = run
        assert done == len(marks) == 24
        common = sum(float(stages[k]) for k in ("decode", "model", "quantise"))
        assert float(total) == pytest.approx(common + float(stages[label]), abs=2e-3)  # the stages' sum
        # ideal = cores / total, to the printed digits (total to 0.0005, ideal to 0.0005)
        assert float(ideal) * float(total) == pytest.approx(cores, abs=float(ideal) * 6e-4 + float(total) * 6e-4)
        # Steady state: from the 7th image's end to the 17th's (24 - 7), 10 images.
        (wall_from, cpu_from), (wall_to, cpu_to) = marks[6], marks[16]
        steady_wall, steady_cpu = wall_to - wall_from, cpu_to - cpu_from
        assert float(rate) == pytest.approx(10 / steady_wall, rel=0.2)
        assert float(efficiency) == pytest.approx(10 / steady_wall * float(total) / cores, rel=0.2, abs=0.02)
        assert float(cores_used) == pytest.approx(steady_cpu / (steady_wall * cores), rel=0.2, abs=0.02)
        assert float(work_used) == pytest.approx(10 * float(total) / steady_cpu, rel=0.2, abs=0.02)
        # The same formula on the cores other processes left (when enough were left to compare).
        if others != "n/a" and cores - float(others) > 0.5:
            assert float(left) == pytest.approx(10 / steady_wall * float(total) / (cores - float(others)),
                                                rel=0.2, abs=0.02)
        # The whole run: every image over the run's wall time.
        assert float(whole_rate) == pytest.approx(done / wall, rel=0.2)
        assert float(whole_efficiency) == pytest.approx(done / wall * float(total) / cores, rel=0.2, abs=0.02)
        assert float(first) == pytest.approx(marks[0][0] - start, rel=0.2, abs=0.02)
        assert float(busy) == pytest.approx(100 * engine / wall, abs=10)

    inputs = sorted((work / "input" / "frames").glob("*.png"))
    runner_png = sorted((work / "runner_png_1").rglob("*.png"))
    runner_webp = sorted((work / "runner_webp_lossless_4").rglob("*.webp"))
    cli_outputs = sorted((work / "cli_out").glob("*.png"))
    assert [p.name for p in runner_png] == [f"{p.stem}--2x.png" for p in inputs]
    assert [p.name for p in cli_outputs] == [p.name for p in runner_png[:4]]  # the CLI's sample
    assert [p.name for p in runner_webp] == [f"{p.stem}--2x.webp" for p in inputs]
    model = load_model(shared_path("weights", "rt4ksr_x2.pth"))
    for index, (source, png, webp) in enumerate(zip(inputs, runner_png, runner_webp)):
        upscaled = _pixels(png)
        assert upscaled.shape == (96, 128, 3)
        assert np.array_equal(upscaled, _pixels(webp))
        if index < len(cli_outputs):
            assert np.array_equal(upscaled, _pixels(cli_outputs[index]))
        frame = torch.from_numpy(_pixels(source)).float().div(255).unsqueeze(0)
        expected = (reference(model, frame)[0] * 255).round().to(torch.uint8).numpy()
        assert np.abs(upscaled.astype(int) - expected).max() <= 1
