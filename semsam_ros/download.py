"""Fetch the official Semantic-SAM release checkpoints into a local cache, resumably, with sha256 checks.

This is the only module of semsam_ros that uses the network, and only when asked (``semsam download``).
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from tqdm import tqdm

from semsam_ros.hashing import file_sha256
from semsam_ros.resources import find_data_file

RELEASE_URLS: dict[str, str] = {
    "swint": "https://github.com/UX-Decoder/Semantic-SAM/releases/download/checkpoint/swint_only_sam_many2many.pth",
    "swinl": "https://github.com/UX-Decoder/Semantic-SAM/releases/download/checkpoint/swinl_only_sam_many2many.pth",
}
PIN_FILE = "models/checkpoints.yaml"  # the sha256 pinned for each release file
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The download failed or the file does not have the expected sha256; the message says what to do."""


def cache_dir(override: str | Path | None = None) -> Path:
    """``override``, else $SEMSAM_CACHE, else ~/.cache/semsam_ros."""
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("SEMSAM_CACHE") or Path.home() / ".cache" / "semsam_ros").expanduser()


def pinned_sha256(name: str) -> str | None:
    """The sha256 pinned for release ``name`` in models/checkpoints.yaml, or None when not known."""
    try:
        path = find_data_file(PIN_FILE)
    except FileNotFoundError:
        return None
    entry = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get(name) or {}
    return entry.get("sha256") or None


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


def download_checkpoint(
    name: str,
    directory: str | Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> tuple[Path, str, bool]:
    """Download release ``name`` ("swint" or "swinl") into the cache: (path, its sha256, whether it was pinned).

    ``url`` replaces the release URL (a mirror), ``sha256`` the pinned digest. An existing file with the
    expected digest (any digest when none is known) is reused; an interrupted download resumes from its
    ``.part`` file. A digest mismatch removes the download and raises DownloadError. When no digest is known,
    the computed one is written next to the file as ``<file>.sha256``.
    """
    if name not in RELEASE_URLS:
        raise DownloadError(f"unknown checkpoint {name!r}; choose from {', '.join(RELEASE_URLS)}")
    expected = (sha256 or pinned_sha256(name) or "").lower() or None
    url = url or RELEASE_URLS[name]
    folder = cache_dir(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RELEASE_URLS[name].rsplit("/", 1)[1]
    if path.is_file():
        digest = file_sha256(path)
        if expected is None or digest == expected:
            return path, digest, expected is not None
        path.unlink()  # a stale or corrupt copy: fetch it again
    part = path.with_name(path.name + ".part")
    _fetch(url, part, progress)
    digest = file_sha256(part)
    if expected is not None and digest != expected:
        part.unlink()
        raise DownloadError(f"sha256 mismatch for {url}: expected {expected}, got {digest}; the download was removed")
    part.replace(path)
    if expected is None:
        path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    return path, digest, expected is not None
