"""Checkpoint downloader against a local HTTP server on 127.0.0.1: resume, restart, sha256 checks, cache folder."""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from semsam_ros.io import download, resources
from semsam_ros.cli import main
from semsam_ros.io.download import DownloadError, download_checkpoint, pinned

PAYLOAD = bytes(range(256)) * 4000 + b"tail"  # ~1 MB, not a multiple of the read chunk
SHA = hashlib.sha256(PAYLOAD).hexdigest()
FILE = "swint_only_sam_many2many.pth"


class Server:
    """Serves PAYLOAD at /ckpt.pth with Range support; can ignore Range or cut the next response short."""

    def __init__(self) -> None:
        self.ranges: list[str | None] = []
        self.ignore_range = False
        self.cut_next_at: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.ranges.append(self.headers.get("Range"))
                if self.path not in ("/ckpt.pth", f"/{FILE}"):
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range") and not server.ignore_range:
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(PAYLOAD):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_next_at is not None:
                    body, server.cut_next_at = body[: server.cut_next_at], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/ckpt.pth"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    s = Server()
    # the local test server speaks plain http; the release URL points at it for the trust-on-first-use tests
    monkeypatch.setattr(download, "SCHEMES", ("https", "http"))
    monkeypatch.setitem(download.RELEASE_URLS, "swint", s.url.replace("ckpt.pth", FILE))
    thread = threading.Thread(target=s.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_first_download_is_recorded_and_checked_on_every_later_use(server: Server, tmp_path: Path) -> None:
    path, digest, how = download_checkpoint("swint", tmp_path, progress=False)
    assert path == tmp_path / FILE and path.read_bytes() == PAYLOAD and digest == SHA and how == "first use"
    assert (tmp_path / f"{FILE}.sha256").read_text() == f"{SHA}  {FILE}  {len(PAYLOAD)}\n"
    assert not (tmp_path / f"{FILE}.part").exists() and server.ranges == [None]
    # a second call checks the file against the record, without any request
    assert download_checkpoint("swint", tmp_path, progress=False) == (path, SHA, "recorded")
    assert server.ranges == [None]
    path.write_bytes(PAYLOAD[:-1] + b"X")  # changed in the cache: deleted, never used
    with pytest.raises(DownloadError, match="sha256 mismatch .* deleted, never used"):
        download_checkpoint("swint", tmp_path, progress=False)
    assert not path.exists() and server.ranges == [None]


@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "only https:// URLs"),
    ("ftp://example.com/x.pth", "only https:// URLs"),
    ("https://example.com/x.pth", "needs --sha256"),
    ("/etc/hostname", "needs --sha256"),
])
def test_sources_are_https_or_explicit_paths_with_a_digest(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(DownloadError, match=message):
        download_checkpoint("swinl", tmp_path / "cache", url=url, progress=False)
    assert not (tmp_path / "cache").exists()


def test_a_local_file_is_copied_and_verified(tmp_path: Path) -> None:
    src = tmp_path / "mine.pth"
    src.write_bytes(PAYLOAD)
    path, digest, how = download_checkpoint("swinl", tmp_path / "c", url=str(src), sha256=SHA, progress=False)
    assert path.read_bytes() == PAYLOAD and (digest, how) == (SHA, "given")
    with pytest.raises(DownloadError, match="mismatch"):
        download_checkpoint("swinl", tmp_path / "d", url=str(src), sha256="0" * 64, progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_resumes_from_the_part_file(server: Server, tmp_path: Path) -> None:
    (tmp_path / f"{FILE}.part").write_bytes(PAYLOAD[:300_000])
    path, digest, pinned = download_checkpoint("swint", tmp_path, url=server.url, sha256=SHA, progress=False)
    assert server.ranges == ["bytes=300000-"] and path.read_bytes() == PAYLOAD and pinned


def test_interrupted_download_resumes_on_the_next_run(server: Server, tmp_path: Path) -> None:
    server.cut_next_at = 123_456
    with pytest.raises(DownloadError, match="run the command again to resume"):
        download_checkpoint("swint", tmp_path, url=server.url, sha256=SHA, progress=False)
    assert (tmp_path / f"{FILE}.part").stat().st_size == 123_456
    download_checkpoint("swint", tmp_path, url=server.url, sha256=SHA, progress=False)
    assert server.ranges == [None, "bytes=123456-"] and (tmp_path / FILE).read_bytes() == PAYLOAD


def test_restarts_when_the_server_ignores_range(server: Server, tmp_path: Path) -> None:
    server.ignore_range = True
    (tmp_path / f"{FILE}.part").write_bytes(b"x" * 1000)
    path, _, _ = download_checkpoint("swint", tmp_path, url=server.url, sha256=SHA, progress=False)
    assert path.read_bytes() == PAYLOAD and server.ranges == ["bytes=1000-"]


def test_complete_part_file_gets_416_and_is_verified(server: Server, tmp_path: Path) -> None:
    (tmp_path / f"{FILE}.part").write_bytes(PAYLOAD)
    path, _, _ = download_checkpoint("swint", tmp_path, url=server.url, sha256=SHA, progress=False)
    assert path.read_bytes() == PAYLOAD and server.ranges == [f"bytes={len(PAYLOAD)}-"]


def test_sha_mismatch_removes_the_download(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=f"expected {'0' * 64}, got {SHA}"):
        download_checkpoint("swint", tmp_path, url=server.url, sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_stale_file_with_a_wrong_digest_is_fetched_again(server: Server, tmp_path: Path) -> None:
    (tmp_path / FILE).write_bytes(b"old")
    path, _, _ = download_checkpoint("swint", tmp_path, url=server.url, sha256=SHA, progress=False)
    assert path.read_bytes() == PAYLOAD and server.ranges == [None]


def test_http_and_connection_errors(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_checkpoint("swint", tmp_path, url=server.url.replace("ckpt", "nothing"), sha256=SHA,
                            progress=False)
    with pytest.raises(DownloadError, match="failed"):
        download_checkpoint("swint", tmp_path, url="http://127.0.0.1:9/ckpt.pth", sha256=SHA, progress=False)
    with pytest.raises(DownloadError, match="unknown checkpoint"):
        download_checkpoint("swinx", tmp_path)


def test_pins_and_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pinned("swint") == (None, None)  # models/checkpoints.yaml: not pinned yet
    pins = tmp_path / "models" / "checkpoints.yaml"
    pins.parent.mkdir()
    pins.write_text(f"swint:\n  file: {FILE}\n  sha256: {SHA}\n  size: 7\nswinl:\n  sha256: null\n")
    monkeypatch.setattr(resources, "share_dirs", lambda: [tmp_path / "absent", tmp_path])
    assert pinned("swint") == (SHA, 7) and pinned("swinl") == (None, None)
    monkeypatch.setenv("SEMSAM_CACHE", str(tmp_path / "env"))
    assert download.cache_dir() == tmp_path / "env" and download.cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("SEMSAM_CACHE")
    assert download.cache_dir() == Path.home() / ".cache" / "semsam_ros"


def test_cli_download(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SEMSAM_CACHE", str(tmp_path / "cache"))
    assert main(["download", "swint", "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tmp_path / "cache" / FILE) and out[1].startswith(f"sha256 {SHA} (nothing pinned")
    assert f"trusted on first use and recorded in {FILE}.sha256" in out[1]
    assert main(["download", "swint", "--url", "file:///etc/passwd", "--sha256", SHA, "-q"]) == 1
    assert "refused file:///etc/passwd" in capsys.readouterr().err
    assert main(["download", "swint", "--url", server.url, "--cache-dir", str(tmp_path / "c2"), "--sha256", SHA,
                 "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"sha256 {SHA} (verified: given)"
    assert main(["download", "swint", "--url", server.url, "--cache-dir", str(tmp_path / "c3"),
                 "--sha256", "f" * 64, "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("semsam: error: sha256 mismatch") and err.count("\n") == 1
