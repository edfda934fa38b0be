"""docs/img/comfyui_nodes.png: the x2 example workflow in ComfyUI's editor, run, with its result.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python \\
        python scripts/screenshot_comfyui.py [--chromium /usr/bin/chromium]

Needs a ComfyUI checkout with its requirements, Chromium (Debian: `apt-get install chromium`)
and Playwright's Python client in this Python (`pip install -e '.[docs]'`; its own browser
download is not used). It starts ComfyUI on 127.0.0.1 (CPU) in a temporary base folder holding
this repository as a custom node and the example inputs, opens the editor in headless Chromium
with a new empty profile, loads workflows/rt4ksr_x2_1080p_to_4k.json (the 1920x1080 example,
upscaled to 3840x2160), queues it, waits for Save Image to show the result and takes the
screenshot. Nothing is written outside the temporary folder except the screenshot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows" / "rt4ksr_x2_1080p_to_4k.json"
OUT = ROOT / "docs" / "img" / "comfyui_nodes.png"
VIEWPORT = {"width": 1200, "height": 640}
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# No first-visit template browser, minimap or canvas statistics over the graph.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(comfyui: Path, python: str, base: Path, log) -> tuple[subprocess.Popen, str]:
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "ComfyUI-RT4KSR").symlink_to(ROOT, target_is_directory=True)
    (base / "input").mkdir()
    for image in (ROOT / "workflows" / "inputs").glob("*.png"):
        shutil.copy(image, base / "input")
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps(SETTINGS))
    port = free_port()
    process = subprocess.Popen(
        [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--base-directory", str(base), "--disable-auto-launch",
         "--database-url", "sqlite:///:memory:"],
        cwd=comfyui, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(url + "/system_stats", timeout=5):
                return process, url
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                raise RuntimeError("ComfyUI did not start (its log is above)")
            time.sleep(1)


def wait_for_empty_queue(url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        with urllib.request.urlopen(url + "/queue", timeout=5) as response:
            queue = json.loads(response.read())
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        if time.time() > deadline:
            raise RuntimeError(f"the queue is still busy after {timeout} s")
        time.sleep(0.5)


def screenshot(url: str, chromium: str, profile: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    workflow = json.loads(WORKFLOW.read_text())
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport=VIEWPORT, device_scale_factor=1,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(url)
            page.wait_for_function("() => window.app?.graph && window.app.canvas", timeout=120_000)
            page.evaluate("([graph, name]) => window.app.loadGraphData(graph, true, true, name)",
                          [workflow, WORKFLOW.stem])
            page.evaluate("() => window.app.queuePrompt(0, 1)")
            save = next(node["id"] for node in workflow["nodes"] if node["type"] == "SaveImage")
            page.wait_for_function(
                "id => { const images = window.app.graph.getNodeById(id)?.imgs;"
                " return images?.length && images.every(image => image.complete && image.naturalWidth); }",
                arg=save, timeout=300_000, polling=500,
            )
            wait_for_empty_queue(url)  # so the queue's badge and Cancel button are gone too
            page.mouse.click(VIEWPORT["width"] // 2, VIEWPORT["height"] - 10)  # the canvas takes focus
            page.evaluate("() => { window.app.canvas.deselectAll?.(); window.app.canvas.setDirty(true, true); }")
            page.wait_for_timeout(2000)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
        finally:
            context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_DIR"),
                        help="the ComfyUI checkout (default: $COMFYUI_DIR)")
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON", sys.executable),
                        help="the Python with ComfyUI's requirements (default: $COMFYUI_PYTHON, else this one)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="default: %(default)s")
    parser.add_argument("--out", type=Path, default=OUT, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.comfyui is None or not (Path(args.comfyui) / "main.py").is_file():
        parser.exit(2, "error: give a ComfyUI checkout with --comfyui or COMFYUI_DIR\n")
    if not Path(args.chromium).is_file():
        parser.exit(2, f"error: {args.chromium}: no Chromium there (apt-get install chromium)\n")
    with tempfile.TemporaryDirectory(prefix="rt4ksr-screenshot-") as temporary:
        base = Path(temporary)
        with open(base / "server.log", "w") as log:
            process = None
            try:
                process, url = start_server(Path(args.comfyui), args.python, base / "comfy", log)
                screenshot(url, args.chromium, base / "profile", args.out)
            except Exception:
                log.flush()
                print((base / "server.log").read_text()[-4000:], file=sys.stderr)
                raise
            finally:
                if process is not None:
                    process.terminate()
                    process.wait(timeout=30)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
