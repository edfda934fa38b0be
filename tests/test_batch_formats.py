"""Save Image Batch's formats and the runner's writer pool: every format decodes to the values
computed independently from the source pixels, the PNG level is Pillow's own at that level,
impossible format/depth pairs are refused before anything runs, and the model shares the
cores with the writers."""

from __future__ import annotations

import importlib.util
import threading

import numpy as np
import png16
import pytest
import tiff16
import torch
from PIL import Image

from runner_helpers import batch_api, folders, write_png  # noqa: F401 - fixture
from rt4ksr_nodes.engine.cpu import sharing_cores, usable_cores
from rt4ksr_nodes.files.images import Picture, write_image
from rt4ksr_nodes.runner import registry
from rt4ksr_nodes.runner.execute import Runner, _Writers
from rt4ksr_nodes.runner.validate import validate

HAVE_OPENEXR = importlib.util.find_spec("OpenEXR") is not None
needs_openexr = pytest.mark.skipif(not HAVE_OPENEXR, reason="the exr extra (OpenEXR) is not installed")


def _run(prompt) -> None:
    assert validate(prompt, registry.node_classes()) == []
    summary = Runner(prompt, registry.node_classes()).run()
    assert (summary.done, summary.failed) == (1, 0), summary.failures


def _read_exr(path) -> np.ndarray:
    import OpenEXR

    channels = OpenEXR.File(str(path)).channels()
    return channels["RGBA"].pixels if "RGBA" in channels else channels["RGB"].pixels


def _expected(source: np.ndarray, bits: str) -> np.ndarray:
    """The file's samples for 8-bit source pixels: 8 bits as they are, 16 bits scaled by
    65535/255 = 257, halves and floats of the loader's float32 value (k / 255); alpha went
    through the mask (1 - alpha) and back, in float32, which the integer formats round away."""
    as_float = source.astype(np.float32) / np.float32(255)
    if source.shape[-1] == 4:
        as_float[..., 3] = np.float32(1) - (np.float32(1) - as_float[..., 3])
    return {"8": source, "16": source.astype(np.uint16) * 257, "half": as_float.astype(np.float16),
            "float": as_float}[bits]


CASES = [  # format, bit_depth, what the file holds, independent decoder
    ("png", "8", "8", lambda p: np.asarray(Image.open(p))),
    ("png", "16", "16", png16.read),
    ("tiff", "8", "8", lambda p: np.asarray(Image.open(p))),
    ("tiff", "16", "16", tiff16.read_uncompressed),
    ("webp lossless", "8", "8", lambda p: np.asarray(Image.open(p))),
    pytest.param("exr", "16", "half", _read_exr, marks=needs_openexr),
    pytest.param("exr", "32", "float", _read_exr, marks=needs_openexr),
]


@pytest.mark.parametrize("fmt, bits, holds, decode", CASES)
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_every_lossless_format_keeps_the_values(folders, fmt, bits, holds, decode, mode):
    source = write_png(folders[0] / "a.png", (12, 10), seed=4, mode=mode)
    if mode == "RGBA":  # fully transparent pixels keep their colour too
        source[::3, ::2, 3] = 0
        Image.fromarray(source).save(folders[0] / "a.png")
    prompt = batch_api(fmt=fmt, template="{stem}", scale=1 if mode == "RGBA" else 2)
    prompt["3"]["inputs"].update(bit_depth=bits, compression=1)
    if mode == "RGBA":
        prompt["3"]["inputs"]["mask"] = ["1", 1]  # alpha comes back from the mask
    else:  # nearest-exact x2: every pixel becomes a 2 x 2 block
        source = source.repeat(2, axis=0).repeat(2, axis=1)
    _run(prompt)
    written = folders[1] / ("a" + {"png": ".png", "tiff": ".tif", "exr": ".exr"}.get(fmt, ".webp"))
    decoded = decode(written)
    expected = _expected(source, holds)
    assert decoded.dtype == expected.dtype and np.array_equal(decoded, expected)


@pytest.mark.parametrize("level", [0, 1, 4, 9])
def test_png_level_is_pillows_at_that_level(tmp_path, level):
    pixels = np.random.default_rng(5).random((30, 40, 3)).astype(np.float32)
    write_image(tmp_path / "ours.png", Picture(pixels, 8), compress_level=level)
    Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(tmp_path / "pillow.png", compress_level=level)
    assert (tmp_path / "ours.png").read_bytes() == (tmp_path / "pillow.png").read_bytes()


def test_default_png_level_is_comfyuis_4(tmp_path):
    pixels = np.random.default_rng(6).random((30, 40, 3)).astype(np.float32)
    write_image(tmp_path / "ours.png", Picture(pixels, 8))
    Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(tmp_path / "four.png", compress_level=4)
    assert (tmp_path / "ours.png").read_bytes() == (tmp_path / "four.png").read_bytes()


def test_16bit_png_level_sets_the_compression(tmp_path):
    samples = np.tile(np.arange(64, dtype=np.uint16) * 1000, (16, 4, 1)).reshape(16, 64, 4)[..., :3].copy()
    sizes = {}
    for level in (0, 9):
        write_image(tmp_path / f"{level}.png", Picture(samples / 65535, 16), compress_level=level)
        assert np.array_equal(png16.read(tmp_path / f"{level}.png"), samples)
        sizes[level] = (tmp_path / f"{level}.png").stat().st_size
    assert sizes[0] > 2 * sizes[9]
    with pytest.raises(ValueError, match="compression level must be 0-9, got 10"):
        write_image(tmp_path / "bad.png", Picture(samples / 65535, 16), compress_level=10)


def test_lossless_webp_is_exact_and_lossy_is_not(tmp_path):
    pixels = np.random.default_rng(7).random((24, 32, 4)).astype(np.float32)
    pixels[::3, ::2, 3] = 0  # colour under full transparency is kept too
    expected = np.rint(pixels * 255).astype(np.uint8)
    write_image(tmp_path / "lossless.webp", Picture(pixels, 8), lossless=True)
    write_image(tmp_path / "lossy.webp", Picture(pixels, 8), quality=50)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "lossless.webp")), expected)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "lossy.webp")), expected)


@pytest.mark.parametrize("fmt, bits, message", [
    ("exr", "8", "exr stores bit_depth 16 (half floats) or 32 (floats), not 8"),
    ("png", "32", "bit_depth 32 (floats) is for exr only; use 8 or 16 for png"),
    ("jpeg", "32", "bit_depth 32 (floats) is for exr only; use 8 or 16 for jpeg"),
])
def test_format_and_depth_are_checked_before_anything_runs(folders, fmt, bits, message):
    write_png(folders[0] / "a.png")
    prompt = batch_api(fmt=fmt)
    prompt["3"]["inputs"]["bit_depth"] = bits
    problems = validate(prompt, registry.node_classes())
    assert [p.message for p in problems] == [message]


def test_exr_without_openexr_is_refused_clearly(folders, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "OpenEXR", None)  # import fails
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "OpenEXR" else real_find_spec(name, *a))
    write_png(folders[0] / "a.png")
    prompt = batch_api(fmt="exr")
    prompt["3"]["inputs"]["bit_depth"] = "16"
    [problem] = validate(prompt, registry.node_classes())
    assert "pip install 'rt4ksr-nodes[exr]'" in problem.message
    with pytest.raises(ValueError, match=r"out\.exr: writing EXR needs the OpenEXR package"):
        write_image(tmp_path / "out.exr", Picture(np.zeros((2, 2, 3), np.float32), 16))
    assert not list(tmp_path.glob("*.exr*"))


def test_writer_pool_counts_busy_writers_and_bounds_the_backlog():
    release, started = threading.Event(), threading.Semaphore(0)

    def job():
        started.release()
        release.wait(10)

    with _Writers(2) as writers:
        for _ in range(2 + _Writers.BACKLOG):  # fills every slot without blocking
            writers.submit(job)
        for _ in range(2):
            assert started.acquire(timeout=10)
        assert writers.busy() == 2
        blocked = threading.Thread(target=writers.submit, args=(job,))
        blocked.start()
        blocked.join(0.3)
        assert blocked.is_alive()  # one more write waits for a slot
        release.set()
        blocked.join(10)
        assert not blocked.is_alive()
    assert writers.busy() == 0


def test_model_gets_the_cores_the_writers_leave_layer_by_layer():
    """The thread count follows the writers between two layers of one call (an encode that
    ends mid-image gives its core back to the next layer), in the thread that shares only."""
    before, cores = torch.get_num_threads(), usable_cores()
    busy, seen = [0], []

    class Layer(torch.nn.Module):
        def __init__(self, writers_after: int):
            super().__init__()
            self.writers_after = writers_after

        def forward(self, x):
            seen.append(torch.get_num_threads())
            busy[0] = self.writers_after  # what the writers do while this layer runs
            return x

    network = torch.nn.Sequential(Layer(cores), Layer(1), Layer(0), Layer(0))
    initial = []

    def other_thread():
        initial.append(torch.get_num_threads())
        busy[0] = cores
        network(torch.zeros(1))

    with sharing_cores(lambda: busy[0]):
        network(torch.zeros(1))
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    # Before each layer (the Sequential's own call comes first): all free, none, one less, all.
    full = min(before, cores)
    assert seen[:4] == [full, 1, max(1, min(before, cores - 1)), full]
    assert seen[4:8] == initial * 4 and initial != [1]  # another thread's count is its own
    assert torch.get_num_threads() == before
    network(torch.zeros(1))  # the hook is gone with the block
    assert seen[-4:] == [before] * 4


def test_runner_writes_on_one_thread_per_core_by_default():
    assert Runner({}, {}).jobs == usable_cores()
