"""Animated GIF, WebP and PNG and multi-page TIFF through the quick CLI: every frame upscaled,
written back as the same kind of file with its timing; read back with Pillow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import crop, reference
from PIL import Image, ImageSequence

from rt4ksr_nodes.cli import upscale as upscale_cli
from rt4ksr_nodes.files.images import Picture, Timing, read_frames, write_frames
from rt4ksr_nodes.cli.upscale import main


@pytest.fixture(autouse=True)
def released_weights(monkeypatch, checkpoints):
    monkeypatch.setenv("RT4KSR_WEIGHTS_DIR", str(checkpoints[2].parent))


def _frames(count=3, height=20, width=24):
    """Distinct 8-bit RGB frames: crops of different Set5 images."""
    return [np.rint(crop("Set5", i, height, width)[0].numpy() * 255).astype(np.uint8)
            for i in range(count)]


def _expected(model, frame: np.ndarray) -> np.ndarray:
    """The model's result for an 8-bit H x W x C frame, on the 0..255 scale."""
    image = torch.from_numpy(frame.astype(np.float32) / 255)[None]
    return reference(model, image)[0].numpy() * 255


def _shown(path, mode):
    """The frames as a viewer shows them (Pillow composites each onto the ones before)."""
    with Image.open(path) as image:
        return [np.asarray(f.convert(mode)).astype(np.float64) for f in ImageSequence.Iterator(image)]


def test_animated_gif_every_frame_with_its_timing(tmp_path, fused_models, capsys):
    images = [Image.fromarray(f) for f in _frames()]
    images[0].save(tmp_path / "clip.gif", save_all=True, append_images=images[1:],
                   duration=[50, 70, 90], loop=3, disposal=[1, 2, 1])
    source_frames = _shown(tmp_path / "clip.gif", "RGB")  # as GIF's palettes left them
    assert main(["-i", str(tmp_path), "--scale", "2"]) == 0  # a folder input takes GIFs too
    with Image.open(tmp_path / "clip--2x.gif") as out:
        assert out.format == "GIF" and out.n_frames == 3 and out.size == (48, 40)
        assert out.info["loop"] == 3
        timing = []
        for frame in ImageSequence.Iterator(out):
            timing.append((frame.info["duration"], frame.disposal_method))
    assert timing == [(50, 1), (70, 2), (90, 1)]
    for shown, source in zip(_shown(tmp_path / "clip--2x.gif", "RGB"), source_frames):
        error = np.abs(shown - _expected(fused_models[2], source.astype(np.uint8)))
        assert error.mean() < 3 and error.max() < 40  # 256 colours a frame
    assert "done 1, failed 0" in capsys.readouterr().err


def test_gif_transparency_stays_transparent(tmp_path):
    frames = [np.dstack([f, np.full(f.shape[:2], 255, np.uint8)]) for f in _frames(2)]
    for frame in frames:
        frame[:8, :8, 3] = 0  # a transparent corner in both frames
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp_path / "t.gif", save_all=True, append_images=images[1:],
                   duration=[40, 40], disposal=2)
    assert main(["-i", str(tmp_path / "t.gif"), "--scale", "2", "--alpha", "bicubic"]) == 0
    for alpha in _shown(tmp_path / "t--2x.gif", "RGBA"):
        alpha = alpha[..., 3]
        assert (alpha[:14, :14] == 0).all() and (alpha[:, 18:] == 255).all()


def test_apng_frames_durations_disposal_and_blend(tmp_path, fused_models):
    images = [Image.fromarray(f) for f in _frames()]
    images[0].save(tmp_path / "a.png", save_all=True, append_images=images[1:],
                   duration=[40, 60, 80], loop=2, disposal=[0, 1, 0], blend=[0, 0, 1])
    source_frames = _shown(tmp_path / "a.png", "RGB")
    assert main(["-i", str(tmp_path / "a.png"), "--scale", "2"]) == 0
    with Image.open(tmp_path / "a--2x.png") as out:
        assert out.n_frames == 3 and out.info["loop"] == 2
        timing = []
        for frame in ImageSequence.Iterator(out):
            timing.append((frame.info["duration"], frame.info["disposal"], frame.info["blend"]))
    assert timing == [(40, 0, 0), (60, 1, 0), (80, 0, 1)]
    for shown, source in zip(_shown(tmp_path / "a--2x.png", "RGB"), source_frames):
        assert np.abs(shown - _expected(fused_models[2], source.astype(np.uint8))).max() <= 1


def test_animated_webp(tmp_path, fused_models):
    frames = _frames()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp_path / "w.webp", save_all=True, append_images=images[1:],
                   duration=[30, 60, 90], loop=0, lossless=True)
    assert main(["-i", str(tmp_path / "w.webp"), "--scale", "2"]) == 0
    with Image.open(tmp_path / "w--2x.webp") as out:
        assert out.n_frames == 3 and out.info["loop"] == 0
        durations = []
        for frame in ImageSequence.Iterator(out):
            frame.load()  # WebP tells a frame's duration once it is decoded
            durations.append(frame.info["duration"])
    assert durations == [30, 60, 90]
    for shown, source in zip(_shown(tmp_path / "w--2x.webp", "RGB"), frames):
        error = np.abs(shown - _expected(fused_models[2], source))
        assert error.mean() < 3 and error.max() < 40  # lossy WebP, quality 95


def test_multipage_tiff_keeps_each_page_kind(tmp_path, fused_models):
    rgb, gray_source, deep_source = _frames()
    gray = np.asarray(Image.fromarray(gray_source).convert("L"))
    deep = (gray.astype(np.uint16) * 257) ^ 0x5A  # 16-bit gray with low bytes 8 bits would lose
    pages = [Image.fromarray(rgb), Image.fromarray(gray), Image.fromarray(deep)]
    pages[0].save(tmp_path / "p.tif", save_all=True, append_images=pages[1:])
    assert main(["-i", str(tmp_path / "p.tif"), "--scale", "2"]) == 0
    with Image.open(tmp_path / "p--2x.tif") as out:
        assert out.n_frames == 3
        found = []
        for page in ImageSequence.Iterator(out):
            found.append((page.mode, np.asarray(page).astype(np.float64)))
    assert [mode for mode, _ in found] == ["RGB", "L", "I;16"]
    model = fused_models[2]
    assert np.abs(found[0][1] - _expected(model, rgb)).max() <= 1
    expected_gray = _expected(model, np.repeat(gray[..., None], 3, axis=-1)).mean(-1)
    assert np.abs(found[1][1] - expected_gray).max() <= 1
    image = torch.from_numpy(np.repeat(deep[..., None], 3, axis=-1).astype(np.float32) / 65535)
    expected_deep = reference(model, image[None])[0].numpy().mean(-1) * 65535
    assert np.abs(found[2][1] - expected_deep).max() <= 2
    assert np.count_nonzero(found[2][1] % 257) > found[2][1].size // 2


def test_16bit_colour_pages_round_trip(tmp_path):
    samples = np.random.default_rng(3).integers(0, 65536, (2, 5, 7, 3), dtype=np.uint16)
    write_frames(tmp_path / "deep.tif", [Picture(s / 65535, 16) for s in samples], Timing("TIFF"))
    with Image.open(tmp_path / "deep.tif") as image:  # Pillow agrees on its 8-bit view
        assert image.n_frames == 2
        for number, page in enumerate(ImageSequence.Iterator(image)):
            assert np.array_equal(np.asarray(page), (samples[number] >> 8).astype(np.uint8))
    pictures, _ = read_frames(tmp_path / "deep.tif")
    for picture, page in zip(pictures, samples):
        assert picture.bits == 16
        assert np.array_equal(np.rint(picture.pixels * 65535).astype(np.uint16), page)


def test_frames_refused_where_one_image_fits_before_any_work(tmp_path, monkeypatch, capsys):
    images = [Image.fromarray(f) for f in _frames()]
    images[0].save(tmp_path / "clip.gif", save_all=True, append_images=images[1:])
    monkeypatch.setattr(upscale_cli, "_run", lambda *a, **k: pytest.fail("upscaled anyway"))
    assert main(["-i", str(tmp_path / "clip.gif"), "--scale", "2", "-o", str(tmp_path / "x.jpg")]) == 1
    assert "has 3 frames" in capsys.readouterr().err
    # The size guard counts every frame: 3 x 480 pixels is over 1000.
    assert main(["-i", str(tmp_path / "clip.gif"), "--scale", "2", "--max-pixels", "1000"]) == 1
    assert "24x20 x 3 frames is over the 1000-pixel limit" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif"]


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_apng_into_another_format_clears_between_whole_frames(tmp_path, suffix):
    frames = [np.dstack([f, np.full(f.shape[:2], 255, np.uint8)]) for f in _frames(2)]
    frames[1][:, :12, 3] = 0  # the second frame is transparent on the left
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp_path / "c.png", save_all=True, append_images=images[1:],
                   disposal=[1, 1], blend=[0, 0], loop=0)  # APNG: clear after each frame
    assert (_shown(tmp_path / "c.png", "RGBA")[1][:, :12, 3] == 0).all()
    target = tmp_path / f"c{suffix}"
    assert main(["-i", str(tmp_path / "c.png"), "--scale", "2", "--alpha", "bicubic",
                 "-o", str(target)]) == 0
    shown = _shown(target, "RGBA")
    assert len(shown) == 2 and (shown[0][..., 3] == 255).all()
    # Nothing of the first frame shows through where the second is transparent.
    assert (shown[1][:, :22, 3] == 0).all() and (shown[1][:, 26:, 3] == 255).all()
    with Image.open(target) as out:
        assert out.info["loop"] == 0


def test_cut_animation_is_named_and_the_others_done(tmp_path, capsys):
    images = [Image.fromarray(f) for f in _frames()]
    images[0].save(tmp_path / "a.gif", save_all=True, append_images=images[1:])
    data = (tmp_path / "a.gif").read_bytes()
    (tmp_path / "b.gif").write_bytes(data[: len(data) * 2 // 3])  # cut in its second frame
    assert main(["-i", str(tmp_path), "--scale", "2"]) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'b.gif'}: cannot read image: damaged or cut short" in err
    assert "Traceback" not in err and err.strip().endswith("done 1, failed 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a--2x.gif", "a.gif", "b.gif"]
