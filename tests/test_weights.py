"""Verified download and offline install of the released checkpoints, over real HTTP on loopback."""

from __future__ import annotations

import http.server
import shutil
import threading
from pathlib import Path

import pytest

from ground_truth import checkpoint_path, sha256_of, shared_path
from rt4ksr_nodes import weights


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


def test_corrupt_existing_file_is_replaced(server, dest):
    (dest / "rt4ksr_x3.pth").write_bytes(b"not a model")
    path = weights.ensure("rt4ksr_x3", dest_dir=dest, mirror=server.url, progress=False)
    assert sha256_of(path) == weights.releases()["rt4ksr_x3"].sha256


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
