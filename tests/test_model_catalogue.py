"""Released models where ComfyUI users put them: a verified copy in any models folder (ComfyUI's,
extra_model_paths.yaml's, the runner's --models-dir) is used with no network access; a file under
a released name that is not the release is the user's own model, listed and loaded as such and
never overwritten; a released model that is neither here nor fetchable is a validation problem."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from ground_truth import checkpoint_path, sha256_of
from offline import no_network  # noqa: F401 - fixture
from runner_helpers import folders  # noqa: F401 - fixture
from rt4ksr_nodes.host import bridge as comfy_bridge
from rt4ksr_nodes.nodes import NODE_CLASS_MAPPINGS
from rt4ksr_nodes.nodes.catalogue import NOT_RELEASE
from rt4ksr_nodes.runner import cli

Loader = NODE_CLASS_MAPPINGS["RT4KSRModelLoader"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty weights folder (where downloads land), no offline source, no mirror."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("RT4KSR_WEIGHTS_DIR", str(folder))
    monkeypatch.delenv("RT4KSR_WEIGHTS_FROM", raising=False)
    monkeypatch.delenv("RT4KSR_WEIGHTS_MIRROR", raising=False)
    return folder


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    """ComfyUI's folder_paths as a server has it: models/ plus an extra_model_paths.yaml root."""
    base, extra = tmp_path / "ComfyUI" / "models", tmp_path / "studio_share"
    kinds = {"upscale_models": [base / "upscale_models", extra / "upscale_models"], "rt4ksr": [extra / "rt4ksr"]}
    for paths in kinds.values():
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
    (base / "rt4ksr").mkdir()
    module = types.ModuleType("folder_paths")
    module.models_dir = str(base)
    module.folder_names_and_paths = {k: ([str(p) for p in v], {".pth"}) for k, v in kinds.items()}
    module.get_folder_paths = lambda kind: list(module.folder_names_and_paths[kind][0])
    monkeypatch.setitem(sys.modules, "folder_paths", module)
    return base, extra


def headless_models(tmp_path, monkeypatch) -> Path:
    models = tmp_path / "models"
    for kind in ("rt4ksr", "upscale_models"):
        (models / kind).mkdir(parents=True)
    monkeypatch.setattr(comfy_bridge.headless, "models_dir", models)
    return models


PLACES = {
    "ComfyUI models/rt4ksr": lambda comfy: comfy[0] / "rt4ksr",
    "extra_model_paths rt4ksr": lambda comfy: comfy[1] / "rt4ksr",
    "ComfyUI models/upscale_models": lambda comfy: comfy[0] / "upscale_models",
    "extra_model_paths upscale_models": lambda comfy: comfy[1] / "upscale_models",
}


@pytest.mark.parametrize("place", sorted(PLACES))
def test_a_verified_copy_in_comfyui_folders_is_used_offline(place, comfy, cache, no_network):
    folder = PLACES[place](comfy)
    shutil.copy(checkpoint_path(3), folder / "rt4ksr_x3.pth")
    assert Loader.VALIDATE_INPUTS("rt4ksr_x3.pth") is True
    (model,) = Loader().load("rt4ksr_x3.pth", True)
    assert model.scale == 3 and "rt4ksr_x3.pth" in model.description
    assert Loader.IS_CHANGED("rt4ksr_x3.pth", True) != "rt4ksr_x3.pth"  # the file was found
    assert "rt4ksr_x3.pth" + NOT_RELEASE not in Loader.INPUT_TYPES()["required"]["model_name"][0]
    assert no_network == [] and list(cache.iterdir()) == []


@pytest.mark.parametrize("kind", ["rt4ksr", "upscale_models"])
def test_a_verified_copy_in_the_runners_models_dir_is_used_offline(kind, tmp_path, monkeypatch, cache, no_network):
    models = headless_models(tmp_path, monkeypatch)
    shutil.copy(checkpoint_path(2), models / kind / "rt4ksr_x2.pth")
    (model,) = Loader().load("rt4ksr_x2.pth", False)
    assert model.scale == 2 and model.form == "train"
    assert no_network == [] and list(cache.iterdir()) == []


def test_a_same_named_other_file_is_the_users_model(comfy, cache, monkeypatch):
    """An x3 checkpoint saved as models/rt4ksr/rt4ksr_x2.pth: listed as the user's file and
    loaded as such (x3); the release x2 still comes from the offline source; nothing is
    overwritten."""
    mine = comfy[1] / "rt4ksr" / "rt4ksr_x2.pth"
    shutil.copy(checkpoint_path(3), mine)
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(checkpoint_path(2).parent))
    choices = Loader.INPUT_TYPES()["required"]["model_name"][0]
    assert choices[:3] == ["rt4ksr_x2.pth", "rt4ksr_x3.pth", "rt4ksr_x2.pth [not the release]"]
    (users,) = Loader().load("rt4ksr_x2.pth [not the release]", True)
    assert users.scale == 3
    (release,) = Loader().load("rt4ksr_x2.pth", True)
    assert release.scale == 2
    assert sha256_of(mine) == sha256_of(checkpoint_path(3))
    assert sha256_of(cache / "rt4ksr_x2.pth") == sha256_of(checkpoint_path(2))


def test_a_changed_release_offline_is_a_validation_problem(comfy, cache, no_network):
    changed = bytearray(checkpoint_path(2).read_bytes())
    changed[-100] ^= 1
    (comfy[0] / "upscale_models" / "rt4ksr_x2.pth").write_bytes(bytes(changed))
    verdict = Loader.VALIDATE_INPUTS("rt4ksr_x2.pth")
    assert "the released rt4ksr_x2.pth is not here and cannot be fetched" in verdict
    assert "upscale_models/rt4ksr_x2.pth failed its SHA-256 check" in verdict
    for folder in (cache, comfy[1] / "rt4ksr", comfy[0] / "upscale_models", comfy[1] / "upscale_models"):
        assert str(folder) in verdict
    assert "install.py --from FOLDER" in verdict
    with pytest.raises(Exception, match="failed its SHA-256 check"):
        Loader().load("rt4ksr_x2.pth", True)


def test_validate_only_reports_a_missing_release(folders, tmp_path, monkeypatch, cache, no_network, capsys):
    models = headless_models(tmp_path, monkeypatch)
    workflow = json.loads((Path(__file__).parents[1] / "workflows" / "rt4ksr_x2_1080p_to_4k.api.json").read_text())
    path = tmp_path / "w.json"
    path.write_text(json.dumps(workflow))
    shutil.copy(Path(__file__).parents[1] / "workflows" / "inputs" / "dusk_640x360.png", folders[0] / "dusk_1920x1080.png")
    code = cli.main([str(path), "--validate-only", "--json", "--models-dir", str(models),
                     "--input-dir", str(folders[0]), "--output-dir", str(folders[1])])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 2
    (problem,) = [e for e in events if e["event"] == "problem"]
    assert problem["node"] == "2" and "rt4ksr_x2.pth is not here and cannot be fetched" in problem["message"]
    assert str(models / "rt4ksr") in problem["message"] and "RT4KSR_WEIGHTS_FROM" in problem["message"]
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(checkpoint_path(2).parent))
    assert cli.main([str(path), "--validate-only", "--models-dir", str(models),
                     "--input-dir", str(folders[0]), "--output-dir", str(folders[1])]) == 0
    assert list(cache.iterdir()) == []  # validation installs nothing


def test_names_not_in_the_list_are_validation_problems(comfy, cache):
    assert "is not one of the RT4KSR models found" in Loader.VALIDATE_INPUTS("absent.pth")
    assert "plain name from the list" in Loader.VALIDATE_INPUTS("../x.pth")


def test_a_changed_file_in_the_weights_folder_is_a_validation_problem(comfy, cache, monkeypatch, no_network):
    """The install folder holds something else under the released name: fetching could not put
    the release there (it never overwrites), so validation says so before anything runs."""
    (cache / "rt4ksr_x3.pth").write_bytes(b"edited")
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(checkpoint_path(3).parent))
    verdict = Loader.VALIDATE_INPUTS("rt4ksr_x3.pth")
    assert f"{cache / 'rt4ksr_x3.pth'} is not the released rt4ksr_x3.pth" in verdict
    assert "never overwritten" in verdict
    assert (cache / "rt4ksr_x3.pth").read_bytes() == b"edited"
