"""Verified download and offline install of the released checkpoints, over real HTTP on loopback."""

from __future__ import annotations

import http.server
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from ground_truth import checkpoint_path, sha256_of, shared_path
from offline import no_network  # noqa: F401 - fixture
from rt4ksr_nodes.files import weights


class Server:
    """A loopback HTTP server with scripted answers: `plan[path]` is a list of actions."""

    def __init__(self, root: Path):
        self.root = root
        self.plan: dict[str, list[str]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                action = (server.plan.get(self.path) or ["serve"]).pop(0)
                file = server.root / self.path.lstrip("/")
                if action == "503":
                    self.send_error(503)
                elif not file.is_file():
                    self.send_error(404)
                else:
                    data = file.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2] if action == "cut" else data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    for scale in (2, 3):
        shutil.copy(checkpoint_path(scale), served)
    running = Server(served)
    yield running
    running.close()


@pytest.fixture
def dest(tmp_path, monkeypatch):
    for var in ("RT4KSR_WEIGHTS_FROM", "RT4KSR_WEIGHTS_MIRROR", "RT4KSR_WEIGHTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_manifest_matches_shared_digests():
    sums = dict(
        reversed(line.split()) for line in shared_path("weights", "SHA256SUMS").read_text().splitlines()
    )
    for release in weights.releases().values():
        assert release.sha256 == sums[release.file]
        assert release.size == checkpoint_path(release.scale).stat().st_size
        assert release.url.startswith("https://github.com/eduardzamfir/RT4KSR/raw/fd6627a")
        assert release.url.endswith(f"/code/checkpoints/{release.file}")
    assert weights.release_for_scale(3).name == "rt4ksr_x3"


def test_download_verifies_and_is_idempotent(server, dest):
    path = weights.ensure("rt4ksr_x2", dest_dir=dest, mirror=server.url, progress=False)
    assert path == dest / "rt4ksr_x2.pth"
    assert sha256_of(path) == weights.releases()["rt4ksr_x2"].sha256
    assert leftovers(dest) == ["rt4ksr_x2.pth"]
    weights.ensure("rt4ksr_x2", dest_dir=dest, mirror=server.url, progress=False)
    assert server.requests == ["/rt4ksr_x2.pth"]


def test_tampered_download_leaves_nothing(server, dest):
    tampered = bytearray((server.root / "rt4ksr_x2.pth").read_bytes())
    tampered[5000] ^= 0xFF
    (server.root / "rt4ksr_x2.pth").write_bytes(bytes(tampered))
    with pytest.raises(weights.WeightsError, match=r"SHA-256 [0-9a-f]{64} does not match.*--from"):
        weights.ensure("rt4ksr_x2", dest_dir=dest, mirror=server.url, progress=False)
    assert leftovers(dest) == []


def test_a_changed_file_is_never_replaced(server, dest):
    """A file under the released name that is not the release (changed on disk, or someone's
    model) is left alone; the message says it failed its SHA-256 check."""
    (dest / "rt4ksr_x3.pth").write_bytes(b"not a model")
    with pytest.raises(weights.WeightsError, match=r"rt4ksr_x3.pth is not the released rt4ksr_x3.pth: "
                       r"it failed its SHA-256 check .*never overwritten"):
        weights.ensure("rt4ksr_x3", dest_dir=dest, mirror=server.url, progress=False)
    assert (dest / "rt4ksr_x3.pth").read_bytes() == b"not a model"
    assert server.requests == []


def test_a_verified_copy_in_a_searched_folder_is_used_offline(tmp_path, dest, no_network):
    folders = [tmp_path / "comfy" / "models" / "rt4ksr", tmp_path / "extra" / "upscale_models"]
    for folder in folders:
        folder.mkdir(parents=True)
    shutil.copy(checkpoint_path(2), folders[1] / "rt4ksr_x2.pth")
    (folders[0] / "rt4ksr_x2.pth").write_bytes(b"someone's own model")  # not the release: skipped
    path = weights.ensure("rt4ksr_x2", dest_dir=dest, search=folders)
    assert path == folders[1] / "rt4ksr_x2.pth"
    assert no_network == [] and leftovers(dest) == []
    assert (folders[0] / "rt4ksr_x2.pth").read_bytes() == b"someone's own model"


def test_offline_with_a_changed_copy_says_so(tmp_path, dest, no_network, monkeypatch):
    """No network, the only copy changed on disk: the error names the failed SHA-256 check and
    the folders searched, not only the failed download."""
    folder = tmp_path / "comfy" / "models" / "rt4ksr"
    folder.mkdir(parents=True)
    changed = bytearray(checkpoint_path(2).read_bytes())
    changed[-100] ^= 1
    (folder / "rt4ksr_x2.pth").write_bytes(bytes(changed))
    with pytest.raises(weights.WeightsError) as error:
        weights.ensure("rt4ksr_x2", dest_dir=dest, search=[folder], progress=False, backoff=0, attempts=1)
    message = str(error.value)
    assert "could not download rt4ksr_x2.pth" in message
    assert f"{folder / 'rt4ksr_x2.pth'} failed its SHA-256 check" in message
    assert f"Searched for a verified local copy in: {dest}, {folder}" in message
    assert sha256_of(folder / "rt4ksr_x2.pth") in message
    assert no_network == ["github.com"] and leftovers(dest) == []


@pytest.fixture
def silent_server():
    """A loopback server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    listener.close()
    for connection in accepted:
        connection.close()


def test_cancel_stops_a_download_from_a_silent_server(silent_server, dest):
    """The server accepts and never answers; Cancel, 0.3 s after it accepted, ends the download
    within a second, as cancelled (not as a failed download), with nothing left behind."""
    url, accepted = silent_server
    asked = []

    def cancelled():
        if accepted and not asked:
            asked.append(time.monotonic() + 0.3)
        return bool(asked) and time.monotonic() > asked[0]

    with pytest.raises(weights.DownloadCancelled):
        weights.ensure("rt4ksr_x2", dest_dir=dest, mirror=url, timeout=20, cancelled=cancelled, progress=False)
    assert time.monotonic() - asked[0] < 1.0
    assert len(accepted) == 1 and leftovers(dest) == []


def test_cancel_between_attempts(server, dest):
    """A 503, then a 30 s wait before the retry: Cancel during the wait ends it at once."""
    server.plan["/rt4ksr_x2.pth"] = ["503"] * 3
    asked = []

    def cancelled():
        if server.requests and not asked:
            asked.append(time.monotonic() + 0.2)
        return bool(asked) and time.monotonic() > asked[0]

    with pytest.raises(weights.DownloadCancelled, match="waiting to retry"):
        weights.ensure("rt4ksr_x2", dest_dir=dest, mirror=server.url, backoff=30, progress=False, cancelled=cancelled)
    assert time.monotonic() - asked[0] < 1.0
    assert server.requests == ["/rt4ksr_x2.pth"] and leftovers(dest) == []


def test_cancel_mid_file_and_progress(server, dest):
    """Progress reports the bytes received against the release's size; a cancel between two
    chunks leaves no file."""
    size = weights.releases()["rt4ksr_x2"].size
    seen = []
    weights.ensure("rt4ksr_x2", dest_dir=dest, mirror=server.url, on_progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (size, size) and all(t == size for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) > 2
    (dest / "rt4ksr_x2.pth").unlink()
    seen.clear()
    with pytest.raises(weights.DownloadCancelled):
        weights.ensure("rt4ksr_x2", dest_dir=dest, mirror=server.url,
                       on_progress=lambda d, t: seen.append(d), cancelled=lambda: len(seen) >= 2)
    assert 2 <= len(seen) < 5 and leftovers(dest) == []


def test_retries_server_errors_and_broken_streams(server, dest):
    server.plan["/rt4ksr_x2.pth"] = ["503", "cut", "serve"]
    path = weights.ensure("rt4ksr_x2", dest_dir=dest, mirror=server.url, progress=False, backoff=0)
    assert sha256_of(path) == weights.releases()["rt4ksr_x2"].sha256
    assert len(server.requests) == 3
    assert leftovers(dest) == ["rt4ksr_x2.pth"]


def test_gives_up_with_offline_advice(server, dest):
    server.plan["/rt4ksr_x2.pth"] = ["503"] * 3
    with pytest.raises(weights.WeightsError, match=r"after 3 attempts \(HTTP 503\).*install\.py --from"):
        weights.ensure("rt4ksr_x2", dest_dir=dest, mirror=server.url, progress=False, backoff=0)
    assert leftovers(dest) == []


def test_not_found_fails_at_once(server, dest):
    with pytest.raises(weights.WeightsError, match="HTTP 404"):
        weights.ensure("rt4ksr_x2", dest_dir=dest, mirror=server.url + "/nowhere", progress=False)
    assert len(server.requests) == 1 and leftovers(dest) == []


def test_unreachable_host(dest):
    closed = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{closed.server_address[1]}"
    closed.server_close()
    with pytest.raises(weights.WeightsError, match="could not download rt4ksr_x2.pth after 2 attempts"):
        weights.ensure("rt4ksr_x2", dest_dir=dest, mirror=url, progress=False, backoff=0, attempts=2)
    assert leftovers(dest) == []


def test_offline_source_installs_verified(dest, monkeypatch):
    monkeypatch.setenv("RT4KSR_WEIGHTS_FROM", str(shared_path("weights")))
    for name in ("rt4ksr_x2", "rt4ksr_x3"):
        path = weights.ensure(name, dest_dir=dest)
        assert path.read_bytes() == checkpoint_path(weights.releases()[name].scale).read_bytes()
    assert leftovers(dest) == ["rt4ksr_x2.pth", "rt4ksr_x3.pth"]


def test_offline_source_with_wrong_file(tmp_path, dest):
    source = tmp_path / "usb"
    source.mkdir()
    shutil.copy(checkpoint_path(3), source / "rt4ksr_x2.pth")  # the x3 file under the x2 name
    with pytest.raises(weights.WeightsError, match="got more than 1699164 bytes, the manifest expects 1699164"):
        weights.ensure("rt4ksr_x2", dest_dir=dest, source_dir=source)
    flipped = bytearray(checkpoint_path(2).read_bytes())
    flipped[-100] ^= 1
    (source / "rt4ksr_x2.pth").write_bytes(bytes(flipped))
    with pytest.raises(weights.WeightsError, match="does not match the manifest"):
        weights.ensure("rt4ksr_x2", dest_dir=dest, source_dir=source)
    with pytest.raises(weights.WeightsError, match="has no rt4ksr_x3.pth"):
        weights.ensure("rt4ksr_x3", dest_dir=dest, source_dir=source)
    assert leftovers(dest) == []


def test_unknown_name(dest):
    with pytest.raises(weights.WeightsError, match="unknown released model 'rt4ksr_x4'"):
        weights.ensure("rt4ksr_x4", dest_dir=dest)
