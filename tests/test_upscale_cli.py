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

from rt4ksr_nodes.cli import upscale as upscale_cli
from rt4ksr_nodes.cli.upscale import main

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


# --- Hardening (issue 13): usage errors before any work, batches, exclusive writes ---------


@pytest.fixture
def no_upscale(monkeypatch):
    """Fail the test if any image gets upscaled."""
    monkeypatch.setattr(upscale_cli, "_run", lambda *a, **k: pytest.fail("upscaled anyway"))


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    (["--benchmark", "-1"], "argument --benchmark: must be 0 or more"),
    (["--max-pixels", "-1"], "argument --max-pixels: must be 0 or more"),
    (["--tile", "-64"], "argument --tile: must be 0 or more"),
    (["--device", "meta"], "argument --device: device meta: RT4KSR runs on cpu, cuda"),
    (["--overwrite", "--skip-existing"], "not allowed with argument"),
])
def test_bad_numbers_and_devices_are_usage_errors(tmp_path, capsys, no_upscale, option, message):
    source = _save(tmp_path / "a.png")
    assert message in _usage_error(["-i", str(source), "--scale", "2", *option], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_without_mps_is_a_usage_error(tmp_path, capsys, no_upscale):
    source = _save(tmp_path / "a.png")
    err = _usage_error(["-i", str(source), "--scale", "2", "--device", "mps"], capsys)
    assert "MPS (Apple GPU) is not available" in err and "Traceback" not in err


@pytest.mark.parametrize("name, message", [
    ("out.xyz", ".xyz is not an image format"),
    ("out", "has no extension"),
])
def test_output_extension_checked_before_the_upscale(tmp_path, capsys, no_upscale, name, message):
    source = _save(tmp_path / "a.png")
    assert message in _usage_error(["-i", str(source), "--scale", "2", "-o", str(tmp_path / name)], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_output_file_name_with_several_inputs_is_refused(tmp_path, capsys, no_upscale):
    a, b = _save(tmp_path / "a.png"), _save(tmp_path / "b.png", index=1)
    err = _usage_error(["-i", str(a), "-i", str(b), "--scale", "2", "-o", str(tmp_path / "out.png")], capsys)
    assert "names an image file, but 2 inputs" in err
    err = _usage_error(["-i", str(tmp_path), "--scale", "2", "-o", str(tmp_path / "out.png")], capsys)
    assert "a folder input" in err
    assert not (tmp_path / "out.png").exists()


def test_output_equal_to_the_input_is_refused_even_with_overwrite(tmp_path, capsys, no_upscale):
    source = _save(tmp_path / "a.png")
    before = source.read_bytes()
    err = _usage_error(["-i", str(source), "--scale", "2", "-o", str(source), "--overwrite"], capsys)
    assert "is the input itself" in err
    (tmp_path / "link.png").symlink_to(source)  # the same file by another name
    err = _usage_error(["-i", str(source), "--scale", "2", "-o", str(tmp_path / "link.png"),
                        "--overwrite"], capsys)
    assert "is the input itself" in err
    assert source.read_bytes() == before


def test_model_folder_and_file_in_the_output_path_are_explained(tmp_path, capsys, checkpoints, no_upscale):
    source = _save(tmp_path / "a.png")
    err = _usage_error(["-i", str(source), "--model", str(checkpoints[2].parent)], capsys)
    assert f"--model: {checkpoints[2].parent} is a folder; give a checkpoint file" in err
    assert "rt4ksr_x2.pth" in err
    (tmp_path / "plain").write_text("a file, not a folder")
    err = _usage_error(["-i", str(source), "--scale", "2", "-o", str(tmp_path / "plain" / "x.png")], capsys)
    assert f"{tmp_path / 'plain'} is a file, not a folder" in err and "Errno" not in err


def test_jpeg_for_alpha_refused_before_the_upscale(tmp_path, capsys, no_upscale):
    Image.new("RGBA", (8, 8)).save(tmp_path / "a.png")
    assert main(["-i", str(tmp_path / "a.png"), "--scale", "2", "-o", str(tmp_path / "a.jpg")]) == 1
    assert "JPEG cannot store alpha" in capsys.readouterr().err


def test_empty_folder_is_reported(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _save(tmp_path / "empty" / "old--2x.png")  # an earlier result is not an input
    assert main(["-i", str(tmp_path / "empty"), "--scale", "2"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'empty'}: no images to upscale" in err and "done 0, failed 1" in err


def test_batch_summary_and_skip_existing(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _save(folder / "a.png")
    _save(folder / "b.png", index=1)
    (folder / "c.png").write_bytes(b"broken")
    assert main(["-i", str(folder), "--scale", "2"]) == 1
    assert capsys.readouterr().err.strip().endswith("done 2, failed 1")
    written = (folder / "a--2x.png").read_bytes()
    # A rerun: existing outputs are errors unless --skip-existing leaves them.
    assert main(["-i", str(folder), "--scale", "2"]) == 1
    assert "a--2x.png exists (use --overwrite" in capsys.readouterr().err
    (folder / "c.png").unlink()
    assert main(["-i", str(folder), "--scale", "2", "--skip-existing"]) == 0
    assert capsys.readouterr().err.strip().endswith("done 0, skipped 2, failed 0")
    assert (folder / "a--2x.png").read_bytes() == written


@pytest.mark.parametrize("flag, kept", [([], True), (["--skip-existing"], True), (["--overwrite"], False)])
def test_output_written_meanwhile_is_never_replaced(tmp_path, capsys, monkeypatch, flag, kept):
    # Another run writes the same output while this one computes: without --overwrite the
    # write must not replace it (the name is taken atomically, not checked and then renamed).
    source = _save(tmp_path / "a.png")
    target = tmp_path / "a--2x.png"
    run = upscale_cli._run

    def racing(*args, **kwargs):
        target.write_bytes(b"the other run's result")
        return run(*args, **kwargs)

    monkeypatch.setattr(upscale_cli, "_run", racing)
    code = main(["-i", str(source), "--scale", "2", *flag])
    assert (target.read_bytes() == b"the other run's result") == kept
    assert code == (1 if flag == [] else 0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_16bit_gray_png_keeps_its_level(tmp_path, fused_models):
    # A 16-bit gray PNG read through an 8-bit conversion comes out almost white.
    level = np.full((12, 14), 24672, dtype=np.uint16)  # about 96 of 255
    level[3:9, 4:10] = 40000
    Image.fromarray(level).save(tmp_path / "g16.png")
    assert main(["-i", str(tmp_path / "g16.png"), "--scale", "2"]) == 0
    with Image.open(tmp_path / "g16--2x.png") as out:
        assert out.mode == "I;16" and out.size == (28, 24)
        result = np.asarray(out).astype(np.float64)
    gray = torch.from_numpy(np.repeat(level[..., None], 3, axis=-1) / 65535).float()[None]
    expected = reference(fused_models[2], gray)[0].numpy().mean(-1) * 65535
    assert np.abs(result - expected).max() <= 2
    assert 24672 * 0.9 < np.median(result) < 24672 * 1.1
