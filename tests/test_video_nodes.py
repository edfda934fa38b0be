"""Upscale Video (RT4KSR)'s lazy VIDEO: known without decoding, streamed by save_to, frames on
request, any source (a file, an in-memory file, frames from Create Video, another upscale).

Pixels are checked against the engine on frames decoded here from lossless RGB clips (FFV1),
so no colour conversion stands between the two.
"""

from __future__ import annotations

import io
import json
import sys
import types
from fractions import Fraction

import numpy as np
import pytest
import torch

from ground_truth import checkpoint_path
from runner_helpers import folders  # noqa: F401 - fixture
from video_clips import decode, frame_times, packets, pictures, write_clip
from rt4ksr_nodes import UpscaleCancelled, load_model, upscale
from rt4ksr_nodes.host import bridge
from rt4ksr_nodes.nodes import video as video_node
from rt4ksr_nodes.nodes.video import RT4KSRUpscaleVideo, UpscaledVideo
from rt4ksr_nodes.nodes.video_values import Components, ComponentsVideo, FileVideo

av = pytest.importorskip("av")
DROPPED = "MP4 dropped the tag: the video pipeline must open MP4 outputs with movflags=use_metadata_tags"


@pytest.fixture(scope="module")
def model():
    return load_model(checkpoint_path(2))


@pytest.fixture(scope="module")
def rgb_clip(tmp_path_factory):
    """Five 40x32 frames, lossless RGB (FFV1) with an AAC tone, 24 fps (MP4: its 1/24 time base
    survives the trip exactly)."""
    path = tmp_path_factory.mktemp("clips") / "rgb.mp4"
    write_clip(path, pictures(5, 32, 40), codec="ffv1", pix_fmt="bgr0", audio=True)
    return path


def lazy(model, video, codec="ffv1", crf=-1):
    (result,) = RT4KSRUpscaleVideo().upscale(model, video, 0, "fp32", codec, crf)
    return result


def starts(path) -> list[Fraction]:
    return [start for start, _ in frame_times(path)]


def psnr(ours: list[np.ndarray], expected: list[np.ndarray]) -> float:
    error = np.mean((np.stack(ours).astype(np.float64) - np.stack(expected).astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / error))


def engine_frames(model, frames) -> list[np.ndarray]:
    """The engine on each uint8 frame, rounded to 8 bits (round half to even)."""
    out = []
    for pixels in frames:
        image = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None]
        out.append((upscale(model, image, precision="fp32")[0].clamp(0, 1) * 255).round().byte().numpy())
    return out


def assert_close(ours: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(ours) == len(expected)
    difference = np.abs(np.stack(ours).astype(np.int16) - np.stack(expected).astype(np.int16))
    assert difference.max() <= 1 and (difference == 0).mean() >= 0.999


def test_size_and_duration_come_from_headers(model, rgb_clip, monkeypatch):
    """Nothing is decoded or upscaled to answer them: the pipeline and frame decoding fail here."""
    def refuse(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(UpscaledVideo, "_render", refuse)
    monkeypatch.setattr(FileVideo, "get_components", refuse)
    video = lazy(model, FileVideo(rgb_clip))
    assert video.get_dimensions() == (80, 64)
    assert video.get_duration() == pytest.approx(5 / 24, abs=0.03)  # the container's, AAC priming included
    # 4:2:0 codecs need even sides: x3 of an odd size is cropped by one, as the pipeline does
    odd = ComponentsVideo(Components(torch.zeros(2, 11, 15, 3), Fraction(24)))
    assert lazy(load_model(checkpoint_path(3)), odd, "h264").get_dimensions() == (44, 32)
    assert lazy(load_model(checkpoint_path(3)), odd, "ffv1").get_dimensions() == (45, 33)


def test_save_to_streams_the_engines_frames_and_copies_audio(model, rgb_clip, tmp_path):
    out = tmp_path / "out.mp4"
    lazy(model, FileVideo(rgb_clip)).save_to(str(out), "auto", "auto")
    frames, _, _ = decode(rgb_clip)
    assert_close(decode(out)[0], engine_frames(model, frames))
    assert starts(out) == starts(rgb_clip)
    assert [p for p, _ in packets(out, "audio")] == [p for p, _ in packets(rgb_clip, "audio")]


def test_save_to_writes_comfy_metadata(model, rgb_clip, tmp_path):
    """Core Save Video's prompt and workflow end up in the MP4's tags, as JSON, so the file
    drags back into the editor."""
    prompt, workflow = {"3": {"class_type": "RT4KSRUpscaleVideo"}}, {"nodes": [], "links": []}
    out = tmp_path / "tagged.mp4"
    lazy(model, FileVideo(rgb_clip)).save_to(str(out), metadata={"prompt": prompt, "workflow": workflow})
    with av.open(str(out)) as container:
        assert "prompt" in container.metadata, DROPPED
        assert json.loads(container.metadata["prompt"]) == prompt
        assert json.loads(container.metadata["workflow"]) == workflow


def test_h264_default_beats_core_quality(model, rgb_clip, tmp_path):
    """codec h264 forces H.264 whatever the node chose; the node's H.264 default (CRF 18) is
    closer to the engine's frames than core Save Video's encoding of the same frames (x264's
    defaults, CRF 23)."""
    ours, core = tmp_path / "h264.mp4", tmp_path / "core.mp4"
    lazy(model, FileVideo(rgb_clip), "hevc").save_to(str(ours), "mp4", "h264")
    with av.open(str(ours)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    expected = engine_frames(model, decode(rgb_clip)[0])
    images = torch.from_numpy(np.stack(expected).astype(np.float32) / 255.0)
    ComponentsVideo(Components(images, Fraction(24))).save_to(str(core))
    assert psnr(decode(ours)[0], expected) > psnr(decode(core)[0], expected) + 1
    with pytest.raises(ValueError, match="format 'webm' is not supported"):
        lazy(model, FileVideo(rgb_clip)).save_to(str(tmp_path / "x.webm"), "webm")


def test_frames_from_memory_and_from_an_in_memory_file(model, rgb_clip, tmp_path):
    """Create Video's frames (no file: written losslessly first, quantised as core Save Video
    does) and a VideoFromFile over bytes."""
    frames = pictures(3, 32, 40)
    images = torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0)
    out = tmp_path / "frames.mp4"
    lazy(model, ComponentsVideo(Components(images, Fraction(12)))).save_to(str(out))
    assert_close(decode(out)[0], engine_frames(model, frames))
    assert starts(out) == [Fraction(i, 12) for i in range(3)]
    buffer = lazy(model, FileVideo(io.BytesIO(rgb_clip.read_bytes()))).get_stream_source()
    with av.open(buffer) as container:
        assert (container.streams.video[0].width, container.streams.video[0].frames) == (80, 5)


def test_get_components_materialises_with_a_warning(model, rgb_clip, caplog):
    components = lazy(model, FileVideo(rgb_clip)).get_components()
    assert "asks for every frame at once" in caplog.text
    assert components.images.shape == (5, 64, 80, 3) and components.frame_rate == 24
    assert components.audio["sample_rate"] == 48000
    expected = np.stack(engine_frames(model, decode(rgb_clip)[0]))
    ours = np.round(components.images.numpy() * 255).astype(np.int16)
    assert np.abs(ours - expected).max() <= 1


def test_get_components_past_memory_refuses_before_work(model, rgb_clip, monkeypatch):
    monkeypatch.setattr(video_node, "available_ram", lambda: 100_000)
    monkeypatch.setattr(UpscaledVideo, "_render", lambda *a: pytest.fail("computed"))
    with pytest.raises(MemoryError, match="5 frames of 80x64.*connect the VIDEO to Save Video"):
        lazy(model, FileVideo(rgb_clip)).get_components()


def test_chained_upscales(model, rgb_clip, tmp_path):
    twice = lazy(model, lazy(model, FileVideo(rgb_clip)))
    assert twice.get_dimensions() == (160, 128)
    twice.save_to(str(tmp_path / "x4.mkv"))
    assert decode(tmp_path / "x4.mkv")[0][0].shape == (128, 160, 3)


def test_segments_only_for_the_users_file_and_their_device_chosen_where_they_run(model, rgb_clip, tmp_path,
                                                                                 monkeypatch):
    """The runner's segment settings (bridge.video_segments) apply to save_to a path; a
    temporary render (a chained upscale's source, get_components, an in-memory file) is one
    pass here. Segments run elsewhere get the device as the user gave it ("auto"), not this
    machine's choice."""
    from rt4ksr_nodes.video.segments import run_locally

    seen = []

    def elsewhere(model_, job, pending, *rest):
        seen.append((job.source, str(job.device)))
        run_locally(model_, job, pending, *rest)

    monkeypatch.setattr(bridge.headless, "video_segments", {"segment": 0.05, "run_segments": elsewhere})
    twice = lazy(model, lazy(model, FileVideo(rgb_clip)))
    twice.save_to(str(tmp_path / "x4.mkv"))
    assert [device for _, device in seen] == ["auto"]  # the outer render only
    assert seen[0][0].name == "chained.mp4"
    assert len(lazy(model, FileVideo(rgb_clip)).get_components().images) == 5
    lazy(model, FileVideo(rgb_clip)).save_to(io.BytesIO())
    assert len(seen) == 1


def test_cancel_stops_and_leaves_no_file(model, rgb_clip, tmp_path, folders, monkeypatch):
    calls = []

    def progress():
        def update(done, total):
            calls.append((done, total))
            bridge.headless.interrupt.set()  # Cancel after the first frame
        return update

    monkeypatch.setattr(bridge.headless, "progress_factory", progress)
    out = tmp_path / "saved" / "cancelled.mp4"
    with pytest.raises(UpscaleCancelled):
        lazy(model, FileVideo(rgb_clip)).save_to(str(out))
    assert calls[0] == (1, 5) and len(calls) < 5
    assert list(out.parent.iterdir()) == []


def test_the_crf_is_checked_against_the_codec():
    check = RT4KSRUpscaleVideo.VALIDATE_INPUTS
    assert check(tile_size=0, codec="h264", crf=-1) is True
    assert check(tile_size=0, codec="h264", crf=0) is True
    assert "crf for h264 must be -1 or 0 to 51, got 60" in check(tile_size=0, codec="h264", crf=60)
    assert "crf does not apply to ffv1 (use -1): it is lossless" in check(tile_size=0, codec="ffv1", crf=10)
    assert "tile_size" in check(tile_size=8, codec="h264", crf=-1)


def test_in_a_server_the_video_is_a_comfy_video_input(model, rgb_clip, monkeypatch):
    """Inside ComfyUI the output subclasses ComfyUI's VideoInput (found in sys.modules, never
    imported), so nodes that check isinstance accept it; headless it does not need it."""
    from abc import ABC, abstractmethod

    class VideoInput(ABC):
        @abstractmethod
        def get_components(self): ...

        @abstractmethod
        def save_to(self, path, format="auto", codec="auto", metadata=None): ...

        def get_stream_source(self):
            raise AssertionError("the base class's default")

    fake = types.ModuleType("comfy_api.latest._input")
    fake.VideoInput = VideoInput
    monkeypatch.setitem(sys.modules, "comfy_api.latest._input", fake)
    video = lazy(model, FileVideo(rgb_clip))
    assert isinstance(video, VideoInput) and isinstance(video, UpscaledVideo)
    assert video.get_dimensions() == (80, 64)

    class FromFrames(VideoInput):  # like ComfyUI's VideoFromComponents: no stream source of its own
        def get_components(self):
            return Components(torch.from_numpy(np.stack(pictures(2, 32, 40)).astype(np.float32) / 255), Fraction(24))

        def save_to(self, path, format="auto", codec="auto", metadata=None):
            raise AssertionError("never encoded lossy")

        def get_dimensions(self):
            return 40, 32

    stream = lazy(model, FromFrames()).get_stream_source()
    with av.open(stream) as container:
        assert container.streams.video[0].frames == 2
