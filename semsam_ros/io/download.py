"""Fetch the official Semantic-SAM release checkpoints into a local cache, resumably, with sha256 checks.

This is the only module of semsam_ros that uses the network, and only when asked (``semsam download``).
"""
from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from tqdm import tqdm

from semsam_ros.io.hashing import file_sha256
from semsam_ros.io.resources import find_data_file

RELEASE_URLS: dict[str, str] = {
    "swint": "https://github.com/UX-Decoder/Semantic-SAM/releases/download/checkpoint/swint_only_sam_many2many.pth",
    "swinl": "https://github.com/UX-Decoder/Semantic-SAM/releases/download/checkpoint/swinl_only_sam_many2many.pth",
}
PIN_FILE = "models/checkpoints.yaml"  # the sha256 and size pinned for each release file
SCHEMES: tuple[str, ...] = ("https",)  # what a URL may use (never file://: a local file is given as a path)
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The download failed or the file does not have the expected sha256; the message says what to do."""


def cache_dir(override: str | Path | None = None) -> Path:
    """``override``, else $SEMSAM_CACHE, else ~/.cache/semsam_ros."""
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("SEMSAM_CACHE") or Path.home() / ".cache" / "semsam_ros").expanduser()


def pinned(name: str) -> tuple[str | None, int | None]:
    """(sha256, size in bytes) pinned for release ``name`` in models/checkpoints.yaml; None where not known."""
    try:
        path = find_data_file(PIN_FILE)
    except FileNotFoundError:
        return None, None
    entry = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get(name) or {}
    return (entry.get("sha256") or None), (entry.get("size") or None)


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Download ``url`` into ``part``, continuing from its current size with an HTTP Range request."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the partial file is complete
            return
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"download of {url} failed: {getattr(exc, 'reason', exc)}") from exc
    with response:
        if response.status != 206:  # the server ignored the Range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5],
            disable=not progress,
        ) as bar:
            try:
                while block := response.read(_CHUNK):
                    f.write(block)
                    bar.update(len(block))
            except OSError as exc:
                raise DownloadError(
                    f"download of {url} interrupted ({exc}); run the command again to resume"
                ) from exc
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"download of {url} ended early; run the command again to resume")


def _check_source(url: str | None, sha256: str | None) -> None:
    """DownloadError unless ``url`` is None (the release), an https URL or a local path, and a user-given one
    comes with the sha256 it must have."""
    if url is None:
        return
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in SCHEMES and not (scheme == "" or Path(url).is_absolute()):
        raise DownloadError(f"refused {url}: only {', '.join(s + '://' for s in SCHEMES)} URLs are downloaded "
                            "(give a local file as a plain path)")
    if not sha256:
        raise DownloadError(f"--url {url} needs --sha256: the digest the file must have, from a source you trust")


def _record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_record(path: Path) -> tuple[str, int] | None:
    """(sha256, size) recorded at the first complete download of ``path`` (trust on first use), if any."""
    try:
        digest, _, size = _record(path).read_text(encoding="utf-8").split()[:3]
        return digest.lower(), int(size)
    except (OSError, ValueError):
        return None


def _verify(path: Path, expected: str | None, size: int | None, source: str) -> str:
    """sha256 of ``path``; the file is deleted and DownloadError raised when it differs from what is expected."""
    actual_size = path.stat().st_size
    digest = file_sha256(path) if size is None or actual_size == size else ""
    if (size is not None and actual_size != size) or (expected is not None and digest != expected):
        path.unlink()
        wanted = f"{expected}" + (f" ({size} bytes)" if size is not None else "")
        raise DownloadError(f"sha256 mismatch for {source}: expected {wanted}, got {digest or 'a file'} "
                            f"({actual_size} bytes); the file was deleted, never used")
    return digest


def download_checkpoint(
    name: str,
    directory: str | Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> tuple[Path, str, str]:
    """Download release ``name`` ("swint" or "swinl") into the cache: (path, its sha256, how it was verified:
    "pinned", "given", "recorded" (matches the first download) or "first use" (now recorded)).

    ``url`` replaces the release URL: an https mirror or a local file path, and then ``sha256`` is required.
    Without a pinned or given digest, the first complete download's sha256 and size are recorded next to the
    file (``<file>.sha256``: digest, name, size) and every later use is checked against them (trust on first
    use). A file that does not match is deleted and DownloadError raised; an interrupted download resumes.
    """
    if name not in RELEASE_URLS:
        raise DownloadError(f"unknown checkpoint {name!r}; choose from {', '.join(RELEASE_URLS)}")
    _check_source(url, sha256)
    folder = cache_dir(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RELEASE_URLS[name].rsplit("/", 1)[1]
    pin = pinned(name)
    recorded = _read_record(path)
    if sha256:
        expected, size, how = sha256.lower(), None, "given"
    elif pin[0]:
        expected, size, how = pin[0], pin[1], "pinned"
    elif recorded:
        expected, size, how = recorded[0], recorded[1], "recorded"
    else:
        expected, size, how = None, None, "first use"
    source = url or RELEASE_URLS[name]
    if path.is_file():
        try:
            return path, _verify(path, expected, size, str(path)), how if expected else "first use"
        except DownloadError:
            if how == "recorded":
                raise  # the cached file changed since its first download: say so, do not fetch silently
    part = path.with_name(path.name + ".part")
    if urllib.parse.urlsplit(source).scheme:
        _fetch(source, part, progress)
    else:
        shutil.copyfile(source, part)
    digest = _verify(part, expected, size, source)
    part.replace(path)
    if expected is None or how == "given":
        _record(path).write_text(f"{digest}  {path.name}  {path.stat().st_size}\n", encoding="utf-8")
    return path, digest, how
