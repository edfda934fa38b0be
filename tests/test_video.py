"""The video pipeline and the quick CLI on clips the tests build (tiny, a few dozen frames).

Expected frames come from the model's own forward on the decoded input (engine_helpers.reference),
colours from the BT.709 / BT.601 formulas, timestamps and packets from the source file.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
import torch
from engine_helpers import reference, reference_alpha
from ground_truth import ROOT
from video_clips import av, decode, frame_times, packets, pictures, write_clip

from rt4ksr_nodes import UpscaleCancelled, upscale_video
from rt4ksr_nodes.cli.upscale import main
from rt4ksr_nodes.video import VideoError, probe
from rt4ksr_nodes.video.codecs import EncodeOptions, plan
from rt4ksr_nodes.video.pixels import Colour, Layout


@pytest.fixture(autouse=True)
def released_weights(monkeypatch, checkpoints):
    monkeypatch.setenv("RT4KSR_WEIGHTS_DIR", str(checkpoints[2].parent))


def _expected(model, frames: list[np.ndarray]) -> np.ndarray:
    """The model's forward on 8-bit frames, rounded to 8 bits."""
    batch = torch.from_numpy(np.stack(frames).astype(np.float32) / 255)
    return np.rint(reference(model, batch).numpy() * 255)


def _assert_lossless(result: list[np.ndarray], expected: np.ndarray) -> None:
    difference = np.abs(np.stack(result).astype(np.int32) - expected)
    assert difference.max() <= 1
    assert (difference == 0).mean() >= 0.999


def _bt709_yuv(rgb) -> tuple[int, int, int]:
    """Limited-range BT.709 Y'CbCr of an 8-bit R'G'B' colour, by the formula."""
    r, g, b = (c / 255 for c in rgb)
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return round(16 + 219 * y), round(128 + 224 * (b - y) / 1.8556), round(128 + 224 * (r - y) / 1.5748)


def _rgb_from_yuv(yuv, kr: float, kb: float) -> np.ndarray:
    y, cb, cr = (yuv[0] - 16) / 219, (yuv[1] - 128) / 224, (yuv[2] - 128) / 224
    r = y + 2 * (1 - kr) * cr
    b = y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return np.clip(np.array([r, g, b]) * 255, 0, 255)


def test_lossless_path_equals_the_model_on_every_frame(tmp_path, fused_models, train_models):
    frames = pictures(12, 48, 64)
    source = tmp_path / "rgb.mkv"
    write_clip(source, frames, codec="ffv1", pix_fmt="bgr0")
    result = upscale_video(fused_models[2], source, tmp_path / "out.mkv", codec="ffv1")
    assert result.frames == 12 and result.warnings == ()
    assert frame_times(tmp_path / "out.mkv") == frame_times(source)
    decoded = decode(tmp_path / "out.mkv")[0]
    assert len(decoded) == 12 and decoded[0].shape == (96, 128, 3)
    _assert_lossless(decoded, _expected(train_models[2], frames))


def test_cli_h264_keeps_timing_audio_metadata_rotation(tmp_path, train_models, capsys):
    # Variable frame rate: irregular gaps in a 1/1000 time base.
    stamps = [0, 40, 80, 150, 170, 250, 290, 300, 380, 420, 500, 540, 620, 660, 700, 790]
    source = tmp_path / "clip.mp4"
    write_clip(
        source, pictures(len(stamps), 48, 64), pts=stamps, time_base=Fraction(1, 1000),
        audio=True, rotation=90, metadata={"title": "A clip", "creation_time": "2024-05-06T07:08:09.000000Z"},
    )
    assert main(["--input", str(source), "--scale", "2"]) == 0
    out = tmp_path / "clip--2x.mp4"
    assert f"{source} -> {out}" in capsys.readouterr().err
    # Every frame at its own time (MP4 stores durations in decode order: compared as a whole).
    assert [start for start, _ in frame_times(out)] == [start for start, _ in frame_times(source)]
    assert packets(out, "audio") == packets(source, "audio")  # byte for byte, same times
    with av.open(str(out)) as container, av.open(str(source)) as original:
        assert container.metadata["title"] == "A clip"
        assert container.metadata["creation_time"] == "2024-05-06T07:08:09.000000Z"
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 128, 96)
        assert abs(container.duration - original.duration) <= 0.01 * av.time_base
        frame = next(container.decode(stream))
    assert frame.rotation == 90
    # Untagged 64 x 48 is SD: BT.601 (SMPTE 170M) assumed and written, limited range.
    assert (int(frame.colorspace), int(frame.color_primaries), int(frame.color_range)) == (6, 6, 1)


@pytest.mark.parametrize("suffix", [".mkv", ".webm"])
def test_the_same_job_writes_the_same_bytes(tmp_path, fused_models, suffix):
    """Matroska draws a random segment UID per file unless told not to: a rerun, a resumed or
    a Ray run of the same job must give the same file."""
    source = tmp_path / "clip.mp4"
    write_clip(source, pictures(4, 24, 32))
    codec = "ffv1" if suffix == ".mkv" else "vp9"
    first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    for out in (first, second):
        upscale_video(fused_models[2], source, out, codec=codec, warn=lambda message: None)
    assert first.read_bytes() == second.read_bytes()


def test_subtitles_chapters_and_extra_metadata_copied(tmp_path, fused_models):
    source = tmp_path / "talk.mkv"
    write_clip(source, pictures(20, 32, 48), subtitles=True, chapters=True)
    out = tmp_path / "talk--2x.mkv"
    upscale_video(fused_models[2], source, out, metadata={"comment": "made by a test"})
    assert packets(out, "subtitles") == packets(source, "subtitles")
    with av.open(str(out)) as container, av.open(str(source)) as original:
        assert container.chapters() == original.chapters() and len(original.chapters()) == 2
        assert container.metadata["COMMENT"] == "made by a test"  # Matroska's spelling
        assert len(list(container.decode(video=0))) == 20


COLOURS = ((200, 30, 40), (20, 180, 60), (30, 40, 220), (250, 240, 10), (128, 128, 128), (240, 20, 230))


def _patch_clip(path, codec: str = "ffv1") -> list[tuple[int, int, int]]:
    """Three frames of 24 x 24 flat patches (2 rows x 3), written as BT.709 limited-range
    Y'CbCr computed by the formula; returns each patch's Y'CbCr."""
    yuvs = [_bt709_yuv(rgb) for rgb in COLOURS]
    planes = [np.zeros((48, 72), np.uint8), np.zeros((24, 36), np.uint8), np.zeros((24, 36), np.uint8)]
    for index, yuv in enumerate(yuvs):
        row, col = divmod(index, 3)
        planes[0][24 * row : 24 * row + 24, 24 * col : 24 * col + 24] = yuv[0]
        for plane, value in zip(planes[1:], yuv[1:]):
            plane[12 * row : 12 * row + 12, 12 * col : 12 * col + 12] = value
    tags = {"colorspace": 1, "color_primaries": 1, "color_trc": 1, "color_range": 1}
    write_clip(path, [planes] * 3, codec=codec, yuv=True, colour=tags)
    return yuvs


def _patch_centres(image: np.ndarray, scale: int):
    """The centre 8 x 8 (input px) of each patch, averaged."""
    for index in range(len(COLOURS)):
        row, col = divmod(index, 3)
        top, left = scale * (24 * row + 8), scale * (24 * col + 8)
        yield image[top : top + 8 * scale, left : left + 8 * scale].reshape(-1, image.shape[-1]).mean(0)


def test_bt709_patches_round_trip_within_two_code_values(tmp_path, fused_models):
    source = tmp_path / "patches.mkv"
    yuvs = _patch_clip(source)
    # The test can fail: read as BT.601, these colours are off by far more than 2.
    assert max(np.abs(_rgb_from_yuv(yuv, 0.299, 0.114) - rgb).max() for yuv, rgb in zip(yuvs, COLOURS)) > 10
    upscale_video(fused_models[2], source, tmp_path / "rgb.mkv", codec="ffv1")  # YUV -> RGB
    rgb = decode(tmp_path / "rgb.mkv")[0][0]
    for centre, yuv in zip(_patch_centres(rgb, 2), yuvs):
        expected = _rgb_from_yuv(yuv, 0.2126, 0.0722)  # the BT.709 colour these codes stand for
        assert np.abs(centre - expected).max() <= 2, (centre, expected)
    # RGB -> YUV: lossless H.264 (CRF 0) keeps the encoder's input; compare its planes.
    upscale_video(fused_models[2], source, tmp_path / "yuv.mkv", codec="h264", crf=0)
    with av.open(str(tmp_path / "yuv.mkv")) as container:
        frame = next(container.decode(video=0))
        assert (int(frame.colorspace), int(frame.color_primaries), int(frame.color_trc)) == (1, 1, 1)
        planes = [frame.to_ndarray(format="yuv444p", interpolation="POINT")[i] for i in range(3)]
    stacked = np.stack(planes, -1).astype(np.float64)
    for centre, yuv in zip(_patch_centres(stacked, 2), yuvs):
        assert np.abs(centre - yuv).max() <= 2, (centre, yuv)


def test_untagged_colour_defaults_follow_the_picture_size():
    def colour(width, height):
        frame = av.VideoFrame(width, height, "yuv420p")
        return Colour.of(frame, Layout.of("yuv420p"))

    assert colour(1280, 720) == Colour(1, 1, 1, 1)  # HD: BT.709, limited range
    assert colour(640, 480) == Colour(6, 1, 6, 1)  # NTSC SD: SMPTE 170M
    assert colour(720, 576) == Colour(6, 1, 5, 1)  # PAL SD: BT.470BG primaries
    assert Colour.of(av.VideoFrame(64, 64, "yuvj420p"), Layout.of("yuvj420p")).range == 2


def test_ten_bit_source_gives_ten_bit_output(tmp_path, fused_models):
    height, width = 32, 64
    ramp = np.linspace(64, 940, width)[None].repeat(height, 0)
    luma = np.rint(ramp + 12 * np.sin(np.arange(height))[:, None]).astype(np.uint16)
    chroma = np.full((height // 2, width // 2), 512, np.uint16)
    source = tmp_path / "deep.mkv"
    write_clip(source, [[luma, chroma, chroma]] * 4, codec="ffv1", pix_fmt="yuv420p10le", yuv=True,
               colour={"colorspace": 1, "color_primaries": 1, "color_trc": 1, "color_range": 1})
    assert main(["--input", str(source), "--scale", "2"]) == 0  # default codec: h264
    with av.open(str(tmp_path / "deep--2x.mkv")) as container:
        frame = next(container.decode(video=0))
        assert container.streams.video[0].codec_context.name == "h264"
    assert frame.format.name == "yuv420p10le"
    out_luma = frame.to_ndarray()[: 2 * height].astype(np.float64)
    assert (out_luma % 4 != 0).mean() > 0.5  # 10-bit codes, not 8-bit ones shifted
    # Same picture: the luma ramp comes back (x2 in each direction) within a few codes.
    assert np.abs(out_luma[4:-4:2, 4:-4:2] - luma[2:-2, 2:-2]).mean() < 4
    assert probe(source).layout.bits == 10
    upscale_video(fused_models[2], source, tmp_path / "deep.ffv1.mkv", codec="ffv1")
    with av.open(str(tmp_path / "deep.ffv1.mkv")) as container:
        assert next(container.decode(video=0)).format.name == "gbrp10le"


def test_alpha_video_keeps_alpha(tmp_path, fused_models, train_models):
    rgb = pictures(4, 40, 56)
    yy, xx = np.mgrid[:40, :56]
    disc = np.clip((18 - np.hypot(yy - 20, xx - 28)) * 64, 0, 255).astype(np.uint8)
    frames = [np.dstack([picture, disc]) for picture in rgb]
    source = tmp_path / "sprite.mov"
    write_clip(source, frames, codec="png", pix_fmt="rgba", rgb_format="rgba")
    upscale_video(fused_models[2], source, tmp_path / "sprite.mkv", codec="ffv1")
    decoded = decode(tmp_path / "sprite.mkv", "rgba")[0]
    _assert_lossless([d[..., :3] for d in decoded], _expected(train_models[2], rgb))
    alpha = torch.from_numpy(disc.astype(np.float32) / 255)[None, ..., None]
    expected_alpha = np.rint(reference_alpha(train_models[2], alpha)[0].numpy() * 255)
    assert np.abs(decoded[0][..., 3] - expected_alpha).max() <= 1
    # Default codec for a .mov with alpha: ProRes 4444, alpha included.
    assert main(["--input", str(source), "--scale", "2"]) == 0
    with av.open(str(tmp_path / "sprite--2x.mov")) as container:
        frame = next(container.decode(video=0))
        assert container.streams.video[0].codec_context.name == "prores"
    assert frame.format.name.startswith("yuva444p")
    assert np.abs(frame.to_ndarray(format="rgba")[..., 3].astype(int) - expected_alpha).max() <= 2


def test_vp9_alpha_webm_keeps_alpha(tmp_path, fused_models):
    alpha = np.full((48, 64, 1), 255, np.uint8)
    alpha[8:40, 8:40] = 60
    source = tmp_path / "overlay.webm"
    write_clip(source, [np.dstack([p, alpha]) for p in pictures(4, 48, 64)], codec="libvpx-vp9",
               pix_fmt="yuva420p", rgb_format="rgba")
    assert probe(source).layout.alpha  # read through libvpx: FFmpeg's own VP9 decoder drops alpha
    upscale_video(fused_models[2], source, tmp_path / "overlay--2x.webm")  # default for .webm + alpha: VP9
    frames = decode(tmp_path / "overlay--2x.webm", "rgba", decoder="libvpx-vp9")[0]
    assert len(frames) == 4 and frames[0].shape == (96, 128, 4)
    assert abs(float(np.median(frames[0][24:72, 24:72, 3])) - 60) <= 3
    assert float(np.median(frames[0][:8, :, 3])) >= 252


def test_odd_sizes_cropped_for_420_kept_by_ffv1(tmp_path, fused_models):
    source = tmp_path / "odd.mkv"
    write_clip(source, pictures(3, 15, 21), codec="ffv1", pix_fmt="bgr0")
    said = []
    upscale_video(fused_models[3], source, tmp_path / "odd.mp4", warn=said.append)
    assert any("cropped to 62x44" in message for message in said)
    assert decode(tmp_path / "odd.mp4")[0][0].shape == (44, 62, 3)
    upscale_video(fused_models[3], source, tmp_path / "odd.ffv1.mkv", codec="ffv1", warn=said.append)
    assert decode(tmp_path / "odd.ffv1.mkv")[0][0].shape == (45, 63, 3)


def test_impossible_outputs_refused_before_any_work(tmp_path, capsys):
    source = tmp_path / "small.mp4"
    write_clip(source, pictures(3, 32, 48))
    info = probe(source)
    huge = dataclasses.replace(info, width=4400, height=2400)  # x2: past H.264 level 6.2
    with pytest.raises(VideoError, match="h264 cannot carry 8800x4800"):
        plan(huge, 2, EncodeOptions(), tmp_path / "big.mp4", "model")
    assert plan(huge, 2, EncodeOptions(codec="ffv1"), tmp_path / "big.mkv", "model").width == 8800
    for options, destination, message in (
        (EncodeOptions(codec="prores"), "x.mp4", "cannot hold prores; use .mov"),
        (EncodeOptions(codec="ffv1", crf=10), "x.mkv", "ffv1: it is lossless"),
        (EncodeOptions(crf=60), "x.mp4", "--crf for h264 must be 0 to 51"),
        (EncodeOptions(preset="quick"), "x.mp4", "--preset for h264 must be one of"),
        (EncodeOptions(), "x.gif", "unsupported video container .gif"),
    ):
        with pytest.raises(VideoError, match=message):
            plan(info, 2, options, tmp_path / destination, "model")
    assert main(["-i", str(source), "--scale", "2", "--crf", "99"]) == 1
    assert "--crf for h264 must be 0 to 51" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.mp4"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="NVENC may exist here")
def test_nvenc_reported_clearly_when_unavailable(tmp_path, fused_models):
    source = tmp_path / "small.mp4"
    write_clip(source, pictures(3, 32, 48))
    with pytest.raises(VideoError, match="h264_nvenc is unavailable here.*--codec h264"):
        upscale_video(fused_models[2], source, tmp_path / "out.mp4", codec="h264_nvenc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.mp4"]


def test_corrupt_packet_concealed_with_a_timed_warning(tmp_path, fused_models):
    source = tmp_path / "damaged.mp4"
    write_clip(source, pictures(36, 48, 64), options={"g": "12", "bf": "0", "threads": "1"})
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        found = [(p.pos, p.size, float(p.pts * stream.time_base)) for p in container.demux(stream) if p.size]
    data = bytearray(source.read_bytes())
    noise = np.random.default_rng(0)
    for position, size, _ in found[16:19]:  # three P frames in the middle
        data[position + 8 : position + size] = noise.integers(0, 255, size - 8, np.uint8).tobytes()
    source.write_bytes(bytes(data))
    survivors = []  # what FFmpeg's decoder makes of the damaged file, packet by packet
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            try:
                survivors += [frame.pts * stream.time_base for frame in packet.decode()]
            except av.error.InvalidDataError:
                pass
    said = []
    result = upscale_video(fused_models[2], source, tmp_path / "out.mp4", warn=said.append)
    assert result.frames == len(survivors) >= 30
    assert [start for start, _ in frame_times(tmp_path / "out.mp4")] == survivors
    times = [float(m.split("at about ")[1].split(" s")[0]) for m in said if "corrupt video data" in m]
    assert times and all(found[16][2] - 0.5 <= t <= found[18][2] + 0.5 for t in times), said


def test_cli_not_a_video_fails_alone_and_content_decides(tmp_path, capsys):
    good = tmp_path / "footage.data"  # an MP4 under a name that says nothing
    write_clip(tmp_path / "footage.mp4", pictures(4, 32, 48))
    (tmp_path / "footage.mp4").rename(good)
    broken = tmp_path / "broken.mp4"
    broken.write_text("this is not a video")
    assert main(["-i", str(broken), "-i", str(good), "--scale", "2", "-o", str(tmp_path / "out") + "/"]) == 1
    err = capsys.readouterr().err
    assert "broken.mp4: not a video FFmpeg can open" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["footage--2x.mp4"]
    # No overwrite without --overwrite; the existing output stays as it was.
    before = (tmp_path / "out" / "footage--2x.mp4").read_bytes()
    assert main(["-i", str(good), "--scale", "2", "-o", str(tmp_path / "out") + "/"]) == 1
    assert "exists (use --overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "footage--2x.mp4").read_bytes() == before


def test_cancel_leaves_nothing(tmp_path, fused_models):
    source = tmp_path / "clip.mp4"
    write_clip(source, pictures(30, 32, 48))
    seen = []
    with pytest.raises(UpscaleCancelled):
        upscale_video(fused_models[2], source, tmp_path / "out.mp4",
                      progress=lambda done, total: seen.append((done, total)), cancel=lambda: len(seen) >= 3)
    assert seen[:3] == [(1, 30), (2, 30), (3, 30)] and len(seen) <= 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_ctrl_c_stops_quickly_exit_130_no_partial_file(tmp_path):
    source = tmp_path / "long.mp4"
    write_clip(source, pictures(240, 96, 128, step=1)[:1] * 240, options={"preset": "ultrafast"})
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "rt4ksr_nodes.upscale", "-i", str(source), "--scale", "2", "--progress"],
        stderr=subprocess.PIPE, env=environment, cwd=tmp_path,
    )
    seen = b""
    while b"/240" not in seen:  # the progress bar has started counting frames
        chunk = process.stderr.read1(4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    process.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 130, (seen + rest).decode(errors="replace")
    assert time.monotonic() - start < 10
    assert b"stopped by Ctrl-C" in rest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4"]
