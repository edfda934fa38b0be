"""The quick-inference CLI, run in-process on small crops with the released checkpoints."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import png16
import pytest
import torch
from ground_truth import ROOT
from engine_helpers import crop, reference
from PIL import Image, ImageCms

from rt4ksr_nodes import upscale_cli
from rt4ksr_nodes.upscale_cli import main

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(autouse=True)
def released_weights(monkeypatch, checkpoints):
    monkeypatch.setenv("RT4KSR_WEIGHTS_DIR", str(checkpoints[2].parent))


def _save(path, height=24, width=30, index=0, **options):
    rgb = crop("Set5", index, height, width)
    Image.fromarray(np.rint(rgb[0].numpy() * 255).astype(np.uint8)).save(path, **options)
    return path


def _expected_8bit(model, path) -> np.ndarray:
    image = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255)[None]
    return np.rint(reference(model, image)[0].numpy() * 255)


def test_default_name_beside_input(tmp_path, fused_models):
    source = _save(tmp_path / "image.png")
    assert main(["--input", str(source), "--scale", "2"]) == 0
    with Image.open(tmp_path / "image--2x.png") as out:
        assert out.size == (60, 48) and out.mode == "RGB"
        result = np.asarray(out).astype(np.float64)
    assert np.abs(result - _expected_8bit(fused_models[2], source)).max() <= 1


def test_output_file_and_folder_inputs(tmp_path, capsys):
    source = _save(tmp_path / "a.png")
    assert main(["-i", str(source), "--scale", "3", "-o", str(tmp_path / "x" / "b.webp")]) == 0
    with Image.open(tmp_path / "x" / "b.webp") as out:
        assert out.format == "WEBP" and out.size == (90, 72)
    folder = tmp_path / "in"
    folder.mkdir()
    _save(folder / "one.png", index=1)
    _save(folder / "two.jpg", index=2)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    _save(folder / "sub" / "deep.png")
    assert main(["-i", str(folder), "--scale", "2", "-o", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one--2x.png", "two--2x.png"]
    # One input and a folder that does not exist yet: a trailing / says it is a folder.
    assert main(["-i", str(source), "--scale", "2", "-o", str(tmp_path / "new") + "/"]) == 0
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["a--2x.png"]


def test_never_overwrites_without_the_flag(tmp_path, capsys):
    source = _save(tmp_path / "a.png")
    target = tmp_path / "a--2x.png"
    target.write_bytes(b"precious")
    second = _save(tmp_path / "b.png", index=1)
    assert main(["-i", str(source), "-i", str(second), "--scale", "2"]) == 1
    assert target.read_bytes() == b"precious"
    assert "a--2x.png exists" in capsys.readouterr().err
    assert (tmp_path / "b--2x.png").exists()
    assert main(["-i", str(source), "--scale", "2", "--overwrite"]) == 0
    assert target.read_bytes()[:4] == b"\x89PNG"


def test_16bit_png_stays_16bit(tmp_path, fused_models):
    rgb = crop("Set14", 4, 20, 26)[0].numpy()
    samples = np.rint(rgb * 65535).astype(np.uint16)
    samples[..., 0] ^= 0x5A  # low bytes an 8-bit pipeline would lose
    png16.write(tmp_path / "deep.png", samples)
    assert main(["-i", str(tmp_path / "deep.png"), "--scale", "2"]) == 0
    out = png16.read(tmp_path / "deep--2x.png")
    assert out.shape == (40, 52, 3)
    assert np.count_nonzero(out % 257) > out.size // 2
    image = torch.from_numpy(samples.astype(np.float32) / 65535)[None]
    expected = reference(fused_models[2], image)[0].numpy() * 65535
    assert np.abs(out - expected).max() <= 1


def test_exif_orientation_icc_and_gray(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: 30 x 24 stored, 24 x 30 shown
    _save(tmp_path / "photo.jpg", exif=exif, icc_profile=SRGB)
    assert main(["-i", str(tmp_path / "photo.jpg"), "--scale", "2"]) == 0
    with Image.open(tmp_path / "photo--2x.png") as out:
        assert out.size == (48, 60)
        assert out.info["icc_profile"] == SRGB
    Image.open(tmp_path / "photo.jpg").convert("L").save(tmp_path / "gray.png")
    assert main(["-i", str(tmp_path / "gray.png"), "--scale", "3"]) == 0
    with Image.open(tmp_path / "gray--3x.png") as out:
        assert out.mode == "L" and out.size == (90, 72)


def test_rgba_and_gray_alpha_kept(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (10, 12, 4), dtype=np.uint8)
    rgba[..., 3] = 200
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., [0, 3]]).save(tmp_path / "la.png")
    for name, mode in [("rgba", "RGBA"), ("la", "LA")]:
        source = str(tmp_path / f"{name}.png")
        assert main(["-i", source, "--scale", "2", "--alpha", "bicubic"]) == 0
        with Image.open(tmp_path / f"{name}--2x.png") as out:
            assert out.mode == mode and out.size == (24, 20)
            assert (np.asarray(out)[..., -1] == 200).all()


def test_bad_file_among_good_ones(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG garbage")
    _save(folder / "c.png", index=1)
    assert main(["-i", str(folder), "-i", str(tmp_path / "missing.png"), "--scale", "2"]) == 1
    err = capsys.readouterr().err
    assert "b.png: cannot read image" in err and "missing.png: no such file" in err
    assert sorted(p.name for p in folder.iterdir()) == [
        "a--2x.png", "a.png", "b.png", "c--2x.png", "c.png"
    ]


def test_size_guard(tmp_path, capsys):
    source = _save(tmp_path / "a.png")
    assert main(["-i", str(source), "--scale", "2", "--max-pixels", "500"]) == 1
    assert "over the 500-pixel limit" in capsys.readouterr().err
    assert not (tmp_path / "a--2x.png").exists()
    assert main(["-i", str(source), "--scale", "2", "--max-pixels", "0"]) == 0


def test_failed_write_leaves_nothing_behind(tmp_path, capsys):
    Image.new("RGBA", (8, 8)).save(tmp_path / "a.png")
    assert main(["-i", str(tmp_path / "a.png"), "--scale", "2", "-o", str(tmp_path / "a.jpg")]) == 1
    assert "JPEG cannot store alpha" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_released_weights_are_fetched_verified_or_explained(tmp_path, monkeypatch, capsys, checkpoints):
    monkeypatch.setenv("RT4KSR_WEIGHTS_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RT4KSR_WEIGHTS_FROM", raising=False)
    monkeypatch.setenv("RT4KSR_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # offline: nothing answers
    source = _save(tmp_path / "a.png")
    assert main(["-i", str(source), "--scale", "3"]) == 2
    assert "python install.py --from FOLDER" in capsys.readouterr().err
    assert not (tmp_path / "a--3x.png").exists()
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(checkpoints[3].parent))
    assert upscale_cli.default_checkpoint(3) == tmp_path / "cache" / "rt4ksr_x3.pth"
    assert main(["-i", str(source), "--scale", "3"]) == 0
    assert (tmp_path / "a--3x.png").exists()


def test_model_path_and_scale_mismatch(tmp_path, checkpoints, capsys):
    source = _save(tmp_path / "a.png")
    assert main(["-i", str(source), "--model", str(checkpoints[3])]) == 0
    assert (tmp_path / "a--3x.png").exists()
    assert main(["-i", str(source), "--model", str(checkpoints[3]), "--scale", "2"]) == 2
    assert "x3 model" in capsys.readouterr().err


def test_benchmark_prints_timings(tmp_path, capsys):
    source = _save(tmp_path / "a.png")
    assert main(["-i", str(source), "--scale", "2", "--benchmark", "2", "--tile", "32"]) == 0
    out = capsys.readouterr().out
    assert "2 runs: median" in out and "input megapixels/s" in out
    assert not (tmp_path / "a--2x.png").exists()


def test_module_entry_point_and_package_attribute(fused_models):
    import rt4ksr_nodes
    import rt4ksr_nodes.upscale  # rebinds the package attribute to the CLI module

    image = torch.rand(1, 6, 8, 3)
    expected = reference(fused_models[2], image)
    assert (rt4ksr_nodes.upscale(fused_models[2], image) - expected).abs().max() <= 1e-5
    result = subprocess.run(
        [sys.executable, "-m", "rt4ksr_nodes.upscale", "--help"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    assert "--benchmark" in result.stdout


def test_colliding_outputs_and_earlier_results(tmp_path, capsys, fused_models):
    folder = tmp_path / "in"
    folder.mkdir()
    _save(folder / "a.png")
    _save(folder / "a.jpg", index=1)  # would also become a--2x.png
    _save(folder / "b--2x.png", index=2)  # an earlier result, not an input
    before = (folder / "b--2x.png").read_bytes()
    assert main(["-i", str(folder), "--scale", "2", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "a.png: its output" in err and "is also" in err and "a.jpg's" in err
    assert sorted(p.name for p in folder.iterdir()) == ["a--2x.png", "a.jpg", "a.png", "b--2x.png"]
    assert (folder / "b--2x.png").read_bytes() == before
    expected = _expected_8bit(fused_models[2], folder / "a.jpg")  # sorted first, so it won
    assert np.abs(np.asarray(Image.open(folder / "a--2x.png"), dtype=float) - expected).max() <= 1


def test_usage_errors_exit_2_before_any_work(tmp_path, capsys):
    source = _save(tmp_path / "a.png")
    for options in (["--tile", "10"], ["--device", "cuda:7"] if not torch.cuda.is_available() else ["--tile", "31"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["-i", str(source), "--scale", "2", *options])
        assert exit_info.value.code == 2
    assert not (tmp_path / "a--2x.png").exists()


def test_unreadable_file_is_named_once(tmp_path, capsys):
    (tmp_path / "b.png").write_bytes(b"not an image")
    assert main(["-i", str(tmp_path / "b.png"), "--scale", "2"]) == 1
    err = capsys.readouterr().err.strip()
    path = tmp_path / "b.png"
    assert err.startswith(f"error: {path}: cannot read image") and f"{path}: {path}" not in err
