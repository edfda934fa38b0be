"""The evaluation pipeline: real model vs bicubic on Set5, LR preparation, CLI outputs."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import warnings
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from ground_truth import checkpoint_path, shared_path
from rt4ksr_nodes.evaluate import cli as ev
from rt4ksr_nodes.evaluate.imresize import imresize_uint8
from rt4ksr_nodes.evaluate.metrics import measure, psnr


def smooth_image(height, width, seed):
    """Natural-ish content: a few random low-frequency waves per channel, 8-bit."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(0.5, 4, size=(2, 3))
        phase = rng.uniform(0, 6, size=3)
        wave = sum(np.sin(2 * np.pi * (fx[i] * x + fy[i] * y) + phase[i]) for i in range(3))
        channels.append(127.5 + 40 * wave)
    return np.clip(np.stack(channels, axis=-1), 0, 255).round().astype(np.uint8)


def test_model_beats_bicubic_on_set5_x2(fused_models):
    bench = ev.find_benchmark(shared_path("images", "Set5"))
    assert bench.name == "Set5" and len(bench.hr_paths) == 5
    models = {2: [("rt4ksr_x2", fused_models[2])]}
    summary = ev.summarize(ev.evaluate([bench], models, ["bicubic"], progress=False))
    by_method = {row["method"]: row for row in summary}
    assert by_method["bicubic"]["images"] == by_method["rt4ksr_x2"]["images"] == 5
    gain = by_method["rt4ksr_x2"]["psnr_y"] - by_method["bicubic"]["psnr_y"]
    assert gain >= 1.5, f"RT4KSR only {gain:.2f} dB over bicubic (Y) on Set5 x2"
    assert by_method["rt4ksr_x2"]["ssim_y"] > by_method["bicubic"]["ssim_y"]


# Bicubic rows of the SR literature's tables (e.g. EDSR, RCAN, SwinIR): MATLAB imresize down and
# up again, HR mod-cropped to the scale, Y PSNR/SSIM with a border of `scale` pixels removed.
LITERATURE_SET5_BICUBIC = {2: (33.66, 0.9299), 3: (30.39, 0.8682)}


@pytest.mark.parametrize("scale", [2, 3])
def test_matlab_bicubic_round_trip_reproduces_the_literature_on_set5(scale):
    scores = []
    for path in ev.find_benchmark(shared_path("images", "Set5")).hr_paths:
        hr = ev.load_rgb8(path)
        hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
        up = imresize_uint8(imresize_uint8(hr, Fraction(1, scale)), scale)
        scores.append(measure(up, hr, crop_border=scale))
    psnr_y, ssim_y = LITERATURE_SET5_BICUBIC[scale]
    assert np.mean([s["psnr_y"] for s in scores]) == pytest.approx(psnr_y, abs=0.05)
    assert np.mean([s["ssim_y"] for s in scores]) == pytest.approx(ssim_y, abs=0.002)


@pytest.mark.parametrize("scale", [2, 3])
def test_generated_pairs_are_mod_cropped_so_lr_is_even(scale):
    hr = smooth_image(37, 50, 0)
    lr, hr_crop = ev.make_pair(hr, scale)
    assert lr.shape[0] % 2 == 0 and lr.shape[1] % 2 == 0
    assert hr_crop.shape == (lr.shape[0] * scale, lr.shape[1] * scale, 3)
    assert hr_crop.shape[:2] == (37 // (2 * scale) * 2 * scale, 50 // (2 * scale) * 2 * scale)
    np.testing.assert_array_equal(hr_crop, hr[: hr_crop.shape[0], : hr_crop.shape[1]])
    np.testing.assert_array_equal(lr, imresize_uint8(hr_crop, Fraction(1, scale)))


def test_given_lr_is_cropped_even_and_hr_follows():
    hr = smooth_image(33, 45, 1)
    lr, hr_crop = ev.make_pair(hr, 3, lr=hr[::3, ::3])  # 11 x 15 LR
    assert lr.shape[:2] == (10, 14) and hr_crop.shape[:2] == (30, 42)
    with pytest.raises(ValueError, match="larger than HR"):
        ev.make_pair(hr[:20], 3, lr=hr[::3, ::3])


def test_ntire23_is_bicubic_then_jpeg_q90():
    hr = ev.load_rgb8(shared_path("images", "Set5", "baby.png"))[:192, :192]
    clean, _ = ev.make_pair(hr, 2)
    assert ev.degrade(clean, "bicubic") is clean
    degraded = ev.degrade(clean, "ntire23")
    assert degraded.shape == clean.shape and not np.array_equal(degraded, clean)
    # NTIRE's data script saved with Pillow's defaults at quality 90: the same bytes.
    buffer = io.BytesIO()
    Image.fromarray(clean).save(buffer, "JPEG", quality=90)
    np.testing.assert_array_equal(degraded, np.asarray(Image.open(buffer).convert("RGB")))
    assert 35 < psnr(degraded, clean) < 50  # mild compression, as q90 should be


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_cli_writes_csv_and_json(tmp_path, capsys):
    folder = tmp_path / "tiny"
    write_png(folder / "a.png", smooth_image(40, 52, 3))
    write_png(folder / "b.png", smooth_image(44, 36, 4))
    csv_path, json_path = tmp_path / "rows.csv", tmp_path / "summary.json"
    code = ev.main([
        "--input", str(folder), "--model", str(checkpoint_path(2)), "--degradation", "bicubic",
        "ntire23", "--csv", str(csv_path), "--json", str(json_path), "--no-progress",
    ])
    assert code == 0
    table = capsys.readouterr().out
    assert "| tiny | x2 | ntire23 | rt4ksr_x2 |" in table

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == ev.CSV_COLUMNS
    assert len(rows) == 2 * 2 * 2  # images x degradations x methods
    assert {r["method"] for r in rows} == {"bicubic", "rt4ksr_x2"}
    assert {(r["image"], r["hr_height"], r["hr_width"]) for r in rows} == {
        ("a", "40", "52"), ("b", "44", "36")
    }
    assert all(r["lr_source"] == "generated" for r in rows)
    assert all(float(r["psnr_y"]) > 20 and 0 < float(r["ssim_y"]) <= 1 for r in rows)

    report = json.loads(json_path.read_text())
    assert report["settings"]["crop_border"] == "scale"
    assert "65.481 R + 128.553 G + 24.966 B" in report["settings"]["y"]
    assert len(report["results"]) == 4
    assert set(report["results"][0]) == {"set", "scale", "degradation", "method", "images",
                                         "psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y", "lr"}
    assert {r["lr"] for r in report["results"]} == {"generated"}


def test_given_lr_is_found_for_a_stem_with_glob_characters(tmp_path):
    root = tmp_path / "testsets" / "Odd"
    hr = smooth_image(40, 48, 5)
    write_png(root / "HR" / "img[1].png", hr)
    write_png(root / "LR_bicubic_x2" / "img[1].png", imresize_uint8(hr, Fraction(1, 2)))
    bench = ev.find_benchmark(root)
    assert bench.lr_path(bench.hr_paths[0], 2) == root / "LR_bicubic_x2" / "img[1].png"


def test_benchmark_layout_uses_given_lr_by_stem(tmp_path, fused_models):
    root = tmp_path / "testsets" / "Tiny"
    hr_a, hr_b = smooth_image(40, 48, 5), smooth_image(36, 44, 6)
    write_png(root / "HR" / "a.png", hr_a)
    write_png(root / "HR" / "b.png", hr_b)
    # One plain name, one DIV2K-style name.
    write_png(root / "LR_bicubic_x2" / "a.png", imresize_uint8(hr_a, Fraction(1, 2)))
    write_png(root / "LR_bicubic_x2" / "bx2.png", imresize_uint8(hr_b, Fraction(1, 2)))
    bench = ev.find_benchmark(root)
    assert bench.name == "Tiny" and bench.lr_path(bench.hr_paths[1], 2).name == "bx2.png"
    rows = ev.evaluate([bench], {2: [("m", fused_models[2])]}, ["bicubic"], progress=False)
    assert [r["lr_source"] for r in rows] == [
        "LR_bicubic_x2/a.png", "LR_bicubic_x2/a.png", "LR_bicubic_x2/bx2.png", "LR_bicubic_x2/bx2.png"
    ]
    assert {r["lr"] for r in ev.summarize(rows)} == {"files"}

    # The given LR is exactly what would have been generated, so the scores must agree.
    plain = tmp_path / "plain"
    write_png(plain / "a.png", hr_a)
    write_png(plain / "b.png", hr_b)
    again = ev.evaluate([ev.find_benchmark(plain)], {2: [("m", fused_models[2])]}, ["bicubic"],
                        progress=False)
    assert [r["lr_source"] for r in again] == ["generated"] * 4
    for given, generated in zip(rows, again):
        assert {k: given[k] for k in ev.METRICS} == {k: generated[k] for k in ev.METRICS}


def _benchmark_with_lr(tmp_path, lr_sizes: dict[str, tuple[int, int]]):
    """HR a.png and b.png (64 x 96); LR_bicubic_x2/ holding the given (height, width) LRs."""
    root = tmp_path / "Bench"
    for seed, name in enumerate(("a", "b")):
        write_png(root / "HR" / f"{name}.png", smooth_image(64, 96, seed))
    (root / "LR_bicubic_x2").mkdir(parents=True)
    for name, (height, width) in lr_sizes.items():
        write_png(root / "LR_bicubic_x2" / f"{name}.png", smooth_image(height, width, 9))
    return root


def test_lr_of_the_wrong_size_is_named_before_any_work(tmp_path, capsys, monkeypatch):
    # The audit's case: a 30 x 30 LR for a 96 x 64 HR (its x2 LR is 48 x 32), b.png present.
    root = _benchmark_with_lr(tmp_path, {"a": (30, 30), "b": (32, 48)})
    monkeypatch.setattr(ev, "score_methods", lambda *a: pytest.fail("scored a wrong pair"))
    with pytest.raises(SystemExit) as stopped:
        ev.main(["--input", str(root), "--model", str(checkpoint_path(2)), "--no-progress"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert f"{root / 'LR_bicubic_x2' / 'a.png'}: 30x30, but HR a.png is 96x64" in err
    assert "48x32" in err and "b.png" not in err
    # Rounded up (MATLAB's imresize of an HR side not divisible by the scale) is accepted.
    assert ev._lr_fits(17, 33, 2) and ev._lr_fits(16, 33, 2) and not ev._lr_fits(15, 33, 2)
    assert not ev._lr_fits(12, 34, 3)  # 12 x 3 = 36 > 34: the HR cannot be cropped to it


def test_partial_lr_folder_is_refused_by_name(tmp_path, capsys):
    root = _benchmark_with_lr(tmp_path, {"a": (32, 48)})  # no LR for b.png
    with pytest.raises(SystemExit) as stopped:
        ev.main(["--input", str(root), "--model", str(checkpoint_path(2)), "--no-progress"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert f"{root / 'LR_bicubic_x2'}: no LR image for b.png" in err


def test_image_smaller_than_the_scale_is_skipped_by_name(tmp_path, capsys, fused_models):
    folder = tmp_path / "mixed"
    write_png(folder / "a.png", smooth_image(40, 52, 3))
    write_png(folder / "dot.png", smooth_image(5, 5, 4))  # smaller than 2 x scale
    write_png(folder / "thin.png", smooth_image(16, 60, 5))  # 16 - 2 x 3 < the SSIM window
    bench = ev.find_benchmark(folder)
    rows = ev.evaluate([bench], {3: [("m", fused_models[3])]}, ["bicubic"], progress=False)
    err = capsys.readouterr().err
    assert {r["image"] for r in rows} == {"a"}
    assert f"{folder / 'dot.png'}: skipped at x3" in err and f"{folder / 'thin.png'}: skipped at x3" in err
    # Only too-small images: a clear error, no numpy warning, no traceback.
    with pytest.raises(ValueError, match="nothing to evaluate"):
        ev.plan([ev.find_benchmark(folder)], [3], crop_border=100)


@pytest.mark.parametrize("option", [
    ["--crop-border", "-1"], ["--scale", "0"], ["--crop-border", "x"], ["--device", "meta"],
    ["--model", "MODELS"],
])
def test_options_are_checked_when_parsed(tmp_path, capsys, monkeypatch, option):
    write_png(tmp_path / "a.png", smooth_image(24, 24, 7))
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: pytest.fail("evaluated anyway"))
    option = [str(checkpoint_path(2).parent) if o == "MODELS" else o for o in option]
    with pytest.raises(SystemExit) as stopped:
        ev.main(["--input", str(tmp_path), "--no-progress", *option])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and f"argument {option[0]}" in err
    if option[0] == "--model":
        assert "is a folder; give a checkpoint file (it holds rt4ksr_x2.pth" in err


def test_report_below_a_file_is_refused_before_the_evaluation(tmp_path, capsys, monkeypatch):
    write_png(tmp_path / "in" / "a.png", smooth_image(24, 24, 7))
    (tmp_path / "plain").write_text("a file")
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: pytest.fail("evaluated anyway"))
    with pytest.raises(SystemExit) as stopped:
        ev.main(["--input", str(tmp_path / "in"), "--no-progress",
                 "--csv", str(tmp_path / "plain" / "rows.csv")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and f"{tmp_path / 'plain'} is a file, not a folder" in err


def test_hidden_files_and_folders_are_not_images(tmp_path):
    write_png(tmp_path / "a.png", smooth_image(24, 24, 7))
    (tmp_path / "._a.png").write_bytes(b"macOS resource fork")
    (tmp_path / "old.png").mkdir()
    assert [p.name for p in ev.find_benchmark(tmp_path).hr_paths] == ["a.png"]


def test_crop_border_larger_than_the_images_is_an_error_without_warnings(tmp_path, capsys):
    write_png(tmp_path / "a.png", smooth_image(40, 52, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "mean of empty slice" would fail the test
        with pytest.raises(SystemExit) as stopped:
            ev.main(["--input", str(tmp_path), "--model", str(checkpoint_path(2)),
                     "--crop-border", "100", "--no-progress"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "nothing to evaluate" in err and "--crop-border 100" in err


def test_16bit_gray_hr_is_read_at_its_level(tmp_path):
    # Pillow's convert("RGB") clips 16-bit gray to 255: a mid-gray image came out almost white.
    samples = (np.arange(24 * 32).reshape(24, 32) * 40 + 20000).astype(np.uint16)
    Image.fromarray(samples).save(tmp_path / "g16.png")
    rgb = ev.load_rgb8(tmp_path / "g16.png")
    expected = np.floor(samples / 257 + 0.5)
    assert rgb.shape == (24, 32, 3)
    assert np.abs(rgb[..., 0] - expected).max() <= 1 and (rgb[..., 0] == rgb[..., 2]).all()


def test_cli_rejects_a_model_outside_the_requested_scales(tmp_path, capsys):
    write_png(tmp_path / "a.png", smooth_image(24, 24, 7))
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--input", str(tmp_path), "--model", str(checkpoint_path(3)), "--scale", "2",
                 "--no-progress"])
    assert exit_info.value.code == 2
    assert "x3" in capsys.readouterr().err


def test_json_report_writes_infinite_psnr_as_null():
    row = {"set": "s", "scale": 2, "degradation": "bicubic", "method": "m", "images": 1,
           "psnr_rgb": math.inf, "ssim_rgb": 1.0, "psnr_y": math.inf, "ssim_y": 1.0}
    report = json.loads(ev.report_json({"y": "BT.601"}, [row]))
    assert report["results"][0]["psnr_rgb"] is None and report["results"][0]["ssim_rgb"] == 1.0
    assert "Infinity" not in ev.report_json({}, [row])
    assert "infinite" in report["settings"]["null"]


def test_cli_names_a_broken_image_and_refuses_a_folder_as_report(tmp_path, capsys):
    folder = tmp_path / "tiny"
    write_png(folder / "a.png", smooth_image(40, 52, 3))
    data = (folder / "a.png").read_bytes()
    (folder / "b.png").write_bytes(data[: len(data) // 2])  # truncated
    arguments = ["--input", str(folder), "--model", str(checkpoint_path(2)), "--no-progress"]
    with pytest.raises(SystemExit) as stopped:
        ev.main(arguments)
    assert stopped.value.code == 2 and str(folder / "b.png") in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        ev.main(arguments + ["--csv", str(tmp_path)])
    assert stopped.value.code == 2 and "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("signum, code, name", [
    (signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM"),
])
def test_stopped_without_traceback_or_report(tmp_path, capsys, monkeypatch, signum, code, name):
    write_png(tmp_path / "in" / "a.png", smooth_image(40, 52, 3))
    monkeypatch.setattr(ev, "score_methods", lambda *a: os.kill(os.getpid(), signum))
    assert ev.main(["--input", str(tmp_path / "in"), "--model", str(checkpoint_path(2)),
                    "--no-progress", "--csv", str(tmp_path / "rows.csv")]) == code
    assert f"stopped by {name}; no report was written" in capsys.readouterr().err
    assert not (tmp_path / "rows.csv").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
