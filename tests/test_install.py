"""install.py and the ComfyUI entry point, run the way ComfyUI and ComfyUI-Manager run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ground_truth import ROOT, checkpoint_path, shared_path


def run_install(*args: str, cwd: Path = ROOT, env_extra: dict | None = None):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RT4KSR_")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "install.py", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_install_from_offline_folder_is_idempotent(tmp_path):
    target = tmp_path / "weights"
    args = ("--from", str(shared_path("weights")), "--weights-dir", str(target))
    first = run_install(*args)
    assert first.returncode == 0, first.stderr
    for scale in (2, 3):
        assert (target / f"rt4ksr_x{scale}.pth").read_bytes() == checkpoint_path(scale).read_bytes()
    mtimes = [p.stat().st_mtime_ns for p in sorted(target.iterdir())]
    second = run_install(*args)
    assert second.returncode == 0 and "SHA-256 verified" in second.stdout
    assert [p.stat().st_mtime_ns for p in sorted(target.iterdir())] == mtimes


def test_install_with_bad_offline_folder_fails_loudly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_install("--from", str(empty), "--weights-dir", str(tmp_path / "w"))
    assert result.returncode == 1
    assert f"offline source {empty} has no rt4ksr_x2.pth" in result.stderr
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_install_offline_without_source_says_what_to_do(tmp_path):
    # No network here and a mirror on a closed loopback port: the advice must be actionable.
    result = run_install(
        "--weights-dir", str(tmp_path / "w"),
        env_extra={"RT4KSR_WEIGHTS_MIRROR": "http://127.0.0.1:9"},
    )
    assert result.returncode == 1
    assert "could not download rt4ksr_x2.pth" in result.stderr
    assert "python install.py --from FOLDER" in result.stderr


LOAD_AS_CUSTOM_NODE = """
import importlib.util, json, sys
name = "ComfyUI-RT4KSR"
spec = importlib.util.spec_from_file_location(
    name, sys.argv[1] + "/__init__.py", submodule_search_locations=[sys.argv[1]]
)
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
print(json.dumps({
    "nodes": module.NODE_DISPLAY_NAME_MAPPINGS,
    "absolute": sorted(k for k in sys.modules if k.split(".")[0] == "rt4ksr_nodes"),
    "comfy": sorted(k for k in sys.modules if k.split(".")[0] in ("comfy", "folder_paths")),
}))
"""


def test_repository_loads_as_comfyui_custom_node(tmp_path):
    # ComfyUI imports custom_nodes/<folder>/__init__.py under the folder's name, with the folder
    # off sys.path: any absolute `rt4ksr_nodes` import would fail (or load a second copy).
    folder = tmp_path / "custom_nodes" / "ComfyUI-RT4KSR"
    folder.parent.mkdir()
    folder.symlink_to(ROOT, target_is_directory=True)
    result = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_AS_CUSTOM_NODE, str(folder)],
        cwd=tmp_path, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert loaded["nodes"]["RT4KSRUpscale"] == "Upscale Image (RT4KSR)"
    assert loaded["absolute"] == [], "absolute imports of rt4ksr_nodes inside the pack"
    assert loaded["comfy"] == [], "the pack imported ComfyUI at import time"
