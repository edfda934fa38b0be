"""RT4KSR in spandrel's registry (what ComfyUI's Load Upscale Model uses): detection of both forms
from .pth and .safetensors, no false positives on other architectures, the right descriptor,
idempotent registration, and the pack imports cleanly with spandrel absent or broken.

spandrel needs torchvision: the registry tests run where spandrel imports (ComfyUI's Python:
COMFYUI_PYTHON -m pytest tests/test_spandrel_arch.py; the ComfyUI integration test runs them).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from ground_truth import ROOT, checkpoint_path, image_paths, load_rgb
from rt4ksr_nodes import save_model


def released_state_dict(scale: int) -> dict:
    """What ComfyUI's loader hands spandrel for the released .pth: the wrapped state dict, keys
    still prefixed with `module.`."""
    return torch.load(checkpoint_path(scale), map_location="cpu", weights_only=True)["state_dict"]


def foreign_state_dicts() -> dict[str, dict]:
    """Key sets of other architectures, some sharing RT4KSR's key names."""
    z = torch.zeros
    return {
        "ESRGAN (new keys)": {"conv_first.weight": z(64, 3, 3, 3), "conv_first.bias": z(64),
                              "body.0.rdb1.conv1.weight": z(32, 64, 3, 3), "conv_body.weight": z(64, 64, 3, 3),
                              "conv_up1.weight": z(64, 64, 3, 3), "conv_last.weight": z(3, 64, 3, 3)},
        "ESRGAN (old keys)": {"model.0.weight": z(64, 3, 3, 3), "model.0.bias": z(64),
                              "model.1.sub.0.RDB1.conv1.0.weight": z(32, 64, 3, 3), "model.10.weight": z(3, 64, 3, 3)},
        "RCAN-like": {"head.0.weight": z(64, 3, 3, 3), "body.0.body.0.body.0.weight": z(64, 64, 3, 3),
                      "tail.0.0.weight": z(256, 64, 3, 3), "tail.1.weight": z(3, 64, 3, 3)},
        "Compact-like": {"body.0.weight": z(64, 3, 3, 3), "body.0.bias": z(64), "body.1.weight": z(64),
                         "body.16.weight": z(48, 64, 3, 3)},
        "RT4KSR keys, wrong shapes": {**{k: v for k, v in released_state_dict(2).items()},
                                      "module.upsample.0.weight": z(5, 24, 3, 3)},
        "RT4KSR with a layer missing": {k: v for k, v in released_state_dict(2).items()
                                        if not k.startswith("module.body.1.conv1.fea_conv.")},
        "RT4KSR plus a foreign layer": {**released_state_dict(2), "module.extra.weight": z(3)},
    }


@pytest.fixture(scope="module")
def spandrel():
    module = pytest.importorskip("spandrel", reason="spandrel (with torchvision) is not importable here")
    from rt4ksr_nodes.nodes import register_with_spandrel

    assert register_with_spandrel() is True
    return module


def test_registered_once_and_idempotent(spandrel):
    from rt4ksr_nodes.model.spandrel_arch import register
    from rt4ksr_nodes.nodes import register_with_spandrel

    assert "RT4KSR" in spandrel.MAIN_REGISTRY
    count = len(spandrel.MAIN_REGISTRY)
    assert register() is False and register_with_spandrel() is True  # the pack imported again
    assert len(spandrel.MAIN_REGISTRY) == count
    assert [a.architecture.id for a in spandrel.MAIN_REGISTRY].count("RT4KSR") == 1


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("form", ["released .pth", "train .safetensors", "fused .safetensors"])
def test_detects_and_loads_both_forms(spandrel, tmp_path, scale, form, train_models, fused_models):
    from spandrel import ImageModelDescriptor, ModelLoader

    if form == "released .pth":
        state = released_state_dict(scale)
    else:
        path = save_model((train_models if form.startswith("train") else fused_models)[scale], tmp_path / "m.safetensors")
        state = ModelLoader().load_state_dict_from_file(path)
    descriptor = ModelLoader().load_from_state_dict(state)
    assert isinstance(descriptor, ImageModelDescriptor)
    assert descriptor.architecture.id == "RT4KSR" and descriptor.purpose == "SR"
    assert (descriptor.scale, descriptor.input_channels, descriptor.output_channels) == (scale, 3, 3)
    assert descriptor.size_requirements.multiple_of == 2 and not descriptor.size_requirements.square
    assert descriptor.supports_half and not descriptor.supports_bfloat16
    assert descriptor.model.fused  # fused on load: the fast form
    # the same pixels as the pack's own model (fused from the same release)
    image = load_rgb(image_paths("Set5")[0], crop=32)
    with torch.no_grad():
        expected = fused_models[scale](image).clamp(0, 1)
    assert torch.equal(descriptor(image), expected)


def test_odd_sizes_padded_as_the_headless_copy_pads(spandrel, fused_models):
    """spandrel pads odd sizes itself; the runner's stand-in (used without spandrel) gives the
    same pixels."""
    from spandrel import ModelLoader

    from rt4ksr_nodes.runner.core_upscale import RT4KSRUpscaleModel

    descriptor = ModelLoader().load_from_state_dict(released_state_dict(2))
    for size in ((31, 17), (1, 8), (20, 1)):
        image = torch.rand(1, 3, *size)
        result = descriptor(image)
        assert result.shape == (1, 3, 2 * size[0], 2 * size[1])
        assert torch.equal(result, RT4KSRUpscaleModel(fused_models[2])(image))


@pytest.mark.parametrize("name", sorted(foreign_state_dicts()))
def test_no_false_positives(spandrel, name):
    from rt4ksr_nodes.model.spandrel_arch import is_rt4ksr

    state = spandrel.canonicalize_state_dict(foreign_state_dicts()[name])
    assert not is_rt4ksr(state)


def run_pack_import(pythonpath: str = "") -> subprocess.CompletedProcess:
    """Imports the pack's nodes headless, then asks for spandrel as a core upscale-model node
    does; prints whether the import alone imported spandrel, the answer, and whether it is
    imported then."""
    code = ("import sys\nimport rt4ksr_nodes.nodes as n\nimported = 'spandrel' in sys.modules\n"
            "print(imported, n.register_with_spandrel(), 'spandrel' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pythonpath, str(ROOT)) if p))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)


@pytest.mark.skipif(importlib.util.find_spec("spandrel") is not None, reason="spandrel is installed here")
def test_pack_import_without_spandrel_never_imports_it():
    result = run_pack_import()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "False"] and "spandrel" not in result.stderr


def test_headless_pack_import_leaves_spandrel_until_a_core_node_needs_it(spandrel):
    result = run_pack_import()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True"]


def test_pack_import_with_a_broken_spandrel(tmp_path):
    """spandrel installed without a working torchvision: the pack still imports and says why
    spandrel is not used."""
    (tmp_path / "spandrel").mkdir()
    (tmp_path / "spandrel" / "__init__.py").write_text("raise ImportError('No module named torchvision')\n")
    result = run_pack_import(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "False"]
    assert "spandrel is installed but cannot be imported (No module named torchvision)" in result.stderr
