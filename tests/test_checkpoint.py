"""Checkpoint recognition, the .safetensors format, and every bad-input path."""

from __future__ import annotations

import collections
import json
import pickle
import struct

import pytest
import torch

from ground_truth import checkpoint_path, image_paths, load_rgb, sha256_of
from rt4ksr_nodes import CheckpointError, load_model, save_model
from rt4ksr_nodes.model import read_checkpoint


def released_state(scale: int = 2) -> dict:
    return torch.load(checkpoint_path(scale), map_location="cpu", weights_only=True)["state_dict"]


def sample_input() -> torch.Tensor:
    return load_rgb(image_paths("Set5")[0], crop=48)


def assert_same_output(a, b, tol=0.0):
    x = sample_input()
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max().item() <= tol


@pytest.mark.parametrize("strip_prefix", [False, True])
def test_bare_state_dict(tmp_path, fused_models, strip_prefix):
    state = released_state()
    if strip_prefix:
        state = {k.removeprefix("module."): v for k, v in state.items()}
    path = tmp_path / "bare.pth"
    torch.save(state, path)
    model = load_model(path)
    assert model.form == "fused" and model.scale == 2
    assert_same_output(model, fused_models[2])


def test_already_fused_state_dict_in_upstream_layout(tmp_path, fused_models):
    # The paper's code saves fused models as a DataParallel state dict that still carries the
    # (unused) high-frequency branch, with its block fused to hfb.0.rep_conv.
    state = {f"module.{k}": v for k, v in fused_models[3].state_dict().items()}
    state["module.gamma"] = torch.zeros(1)
    state["module.hfb.0.rep_conv.weight"] = torch.randn(24, 24, 3, 3)
    state["module.hfb.0.rep_conv.bias"] = torch.randn(24)
    path = tmp_path / "rep_model_rt4ksr_x3.pth"
    torch.save(collections.OrderedDict(state), path)
    check = read_checkpoint(path)
    assert check.form == "fused" and check.hyperparameters["scale"] == 3
    model = load_model(path, reparameterize=False)
    assert model.form == "fused"
    assert_same_output(model, fused_models[3])


def test_safetensors_round_trip_is_bit_exact(tmp_path, fused_models, train_models):
    for model in (fused_models[2], train_models[3]):
        path = save_model(model, tmp_path / f"{model.form}_x{model.scale}.safetensors")
        loaded = load_model(path, reparameterize=False)
        assert loaded.form == model.form and loaded.scale == model.scale
        original, reread = model.state_dict(), loaded.state_dict()
        assert original.keys() == reread.keys()
        assert all(torch.equal(original[k], reread[k]) for k in original)
        assert loaded.source_sha256 == sha256_of(checkpoint_path(model.scale))
        assert_same_output(loaded, model)


def test_safetensors_metadata(tmp_path, fused_models):
    path = save_model(fused_models[2], tmp_path / "m.safetensors")
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    metadata = json.loads(path.read_bytes()[8 : 8 + header_len])["__metadata__"]
    assert metadata == {
        "architecture": "RT4KSR",
        "form": "fused",
        "scale": "2",
        "source_sha256": sha256_of(checkpoint_path(2)),
    }


def test_save_refuses_overwrite_and_other_suffixes(tmp_path, fused_models):
    path = save_model(fused_models[2], tmp_path / "m.safetensors")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_model(fused_models[3], path)
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match=".safetensors"):
        save_model(fused_models[2], tmp_path / "m.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_load_returns_eval_model_without_grad():
    model = load_model(checkpoint_path(2))
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


# --- bad input: each with a message that names the file and says what was wrong -------------


def test_truncated_file(tmp_path):
    path = tmp_path / "rt4ksr_x2.pth"
    data = checkpoint_path(2).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"rt4ksr_x2\.pth.*truncated"):
        load_model(path)


def test_truncated_safetensors(tmp_path, fused_models):
    path = save_model(fused_models[2], tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*truncated"):
        load_model(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_random_bytes(tmp_path, suffix):
    generator = torch.Generator().manual_seed(0)
    for index in range(25):  # random bytes fail in many different places of a parser
        path = tmp_path / f"noise{index}{suffix}"
        path.write_bytes(torch.randint(0, 256, (4096,), generator=generator, dtype=torch.uint8).numpy().tobytes())
        with pytest.raises(CheckpointError, match=rf"noise{index}\{suffix}: cannot be read"):
            load_model(path)
    # the classic pickle opcodes with a valid-looking start, too
    path = tmp_path / "pickle_like.pth"
    path.write_bytes(b"\x80\x02" + bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="pickle_like.pth: cannot be read"):
        load_model(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file; give the \.pth"):
        load_model(tmp_path)


class TouchOnUnpickle:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def _run_code_payloads(tmp_path, marker):
    """Pickles that would run code if unpickled: torch.save's zip form and raw pickles."""
    payload = {"state_dict": released_state(), "extra": TouchOnUnpickle(marker)}
    torch.save(payload, tmp_path / "zip.pth")
    for protocol in (0, 2):
        (tmp_path / f"raw{protocol}.pth").write_bytes(pickle.dumps(TouchOnUnpickle(marker), protocol=protocol))
    return sorted(tmp_path.glob("*.pth"))


def test_unsafe_pickle_is_refused_and_not_executed(tmp_path):
    """Refused, never run, and the message never repeats torch's advice to retry with
    weights_only=False (that would run the payload)."""
    marker = tmp_path / "payload-ran"
    for path in _run_code_payloads(tmp_path, marker):
        with pytest.raises(CheckpointError, match=rf"{path.name}: refused.*unsafe unpickling") as error:
            load_model(path)
        message = str(error.value)
        assert "weights_only=False" not in message and "weights_only` set to `False" not in message
        assert "trusted source" not in message and "GLOBAL" in message
    assert not marker.exists()


def test_other_architecture(tmp_path):
    other = {
        "conv_first.weight": torch.zeros(64, 3, 3, 3),
        "conv_first.bias": torch.zeros(64),
        "body.0.rdb1.conv1.weight": torch.zeros(32, 64, 3, 3),
        "conv_last.weight": torch.zeros(3, 64, 3, 3),
    }
    path = tmp_path / "esrgan.pth"
    torch.save({"params_ema": other}, path)
    with pytest.raises(CheckpointError, match=r"esrgan\.pth: not an RT4KSR checkpoint.*conv_first"):
        load_model(path)


def _drop(state):
    del state["module.body.2.norm.bias"]


def _add(state):
    state["module.body.1.extra.weight"] = torch.zeros(3)


def _reshape(state):
    state["module.tail.0.weight"] = torch.zeros(23)


@pytest.mark.parametrize("change, wrapped, message", [
    (_drop, True, r"broken\.pth.*missing keys: body\.2\.norm\.bias"),
    (_add, False, r"broken\.pth.*unexpected keys: body\.1\.extra\.weight"),
    (_reshape, False, r"broken\.pth.*wrong shapes: tail\.0\.weight \(23,\)"),
])
def test_key_problems_are_named(tmp_path, change, wrapped, message):
    """Missing, unexpected and wrong-shape keys, in the released wrapper and as a bare dict."""
    state = released_state()
    change(state)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": state} if wrapped else state, path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_mixed_forms_are_refused(tmp_path):
    state = {k.removeprefix("module."): v for k, v in released_state().items()}
    state["body.0.conv1.rep_conv.weight"] = torch.zeros(24, 24, 3, 3)
    path = tmp_path / "mixed.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="mixes fused"):
        load_model(path)


def test_safetensors_metadata_must_agree(tmp_path, fused_models):
    from safetensors.torch import save_file

    path = tmp_path / "liar.safetensors"
    tensors = {k: v.contiguous() for k, v in fused_models[2].state_dict().items()}
    save_file(tensors, str(path), metadata={"architecture": "RT4KSR", "scale": "3"})
    with pytest.raises(CheckpointError, match=r"metadata says scale='3'"):
        load_model(path)
    save_file(tensors, str(path), metadata={"architecture": "SPAN"})
    with pytest.raises(CheckpointError, match="architecture 'SPAN'"):
        load_model(path)


def test_scale_must_be_at_least_two(tmp_path):
    state = released_state()
    state["module.upsample.0.weight"] = torch.zeros(12, 24, 3, 3)  # 3 x (2 x 1)^2: a x1 model
    state["module.upsample.0.bias"] = torch.zeros(12)
    path = tmp_path / "x1.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"x1\.pth: upsample\.0\.weight has 12 output channels.*scale 2 or more"):
        load_model(path)
