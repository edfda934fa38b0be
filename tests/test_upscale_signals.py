"""The quick CLI stopped by SIGTERM, Ctrl-C (SIGINT) and kill -9 while it writes an output."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from ground_truth import ROOT
from PIL import Image

from rt4ksr_nodes.files.paths import TEMP_SUFFIX, remove_stale_temps
from rt4ksr_nodes.cli.upscale import main

# The CLI, with the image encoder stuck after writing part of the first output.
STUCK_WRITER = """
import sys, time
from rt4ksr_nodes.files import images as imageio
from rt4ksr_nodes.cli import upscale as upscale_cli

def stuck(out, *args):
    out.write(b"half an image")
    out.flush()
    print("writing", flush=True)
    time.sleep(120)

imageio._write = stuck
sys.exit(upscale_cli.main(sys.argv[1:]))
"""


@pytest.fixture
def folder(tmp_path, monkeypatch, checkpoints):
    monkeypatch.setenv("RT4KSR_WEIGHTS_DIR", str(checkpoints[2].parent))
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    return tmp_path


def _stuck_run(folder) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", STUCK_WRITER, "-i", str(folder), "--scale", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    assert process.stdout.readline().strip() == "writing", process.communicate()[1]
    return process


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX))


@pytest.mark.parametrize("signum, code, name", [
    (signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C"),
])
def test_stopped_cleanly_by_sigterm_and_ctrl_c(folder, signum, code, name):
    process = _stuck_run(folder)
    assert len(_temps(folder)) == 1
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code
    assert "Traceback" not in err and f"stopped by {name}" in err
    assert err.strip().endswith("done 0, failed 0, not done 3")
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.png", "c.png"]


def test_temporary_file_of_a_killed_run_is_removed_by_the_next(folder, capsys):
    process = _stuck_run(folder)
    process.kill()  # kill -9: nothing of the CLI runs
    process.wait(timeout=60)
    (temp,) = _temps(folder)
    stale = folder / temp
    os.utime(stale, (0, 0))  # old, and no longer locked: its writer is gone

    # A temporary file another run is writing right now is locked: it stays.
    live = folder / f".b--2x.png.livewriter{TEMP_SUFFIX}"
    with open(live, "wb") as writing:
        fcntl.flock(writing, fcntl.LOCK_EX)
        os.utime(live, (0, 0))
        assert main(["-i", str(folder), "--scale", "2"]) == 0
        err = capsys.readouterr().err
        assert f"removed {stale}" in err
        assert live.exists() and not stale.exists()
    # Neither temporary file was taken for an input.
    assert sorted(p.name for p in folder.glob("*--2x.png")) == ["a--2x.png", "b--2x.png", "c--2x.png"]
    assert "done 3, failed 0" in err
    assert remove_stale_temps(folder) == [live]  # its writer stopped: now it goes
