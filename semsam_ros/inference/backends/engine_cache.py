"""On-disk cache of compiled engines, validated before every load.

Layout: ``<root>/<weights sha256[:16]>/<gpu>-sm<cc>/<part>-<H>x<W>-<bucket>-<precision>.pt2`` (Torch-TensorRT
route; the ONNX route's are ``...-<precision>-onnx.engine``, serialized TensorRT plans) and a ``.json``
manifest beside it holding the full :class:`EngineKey`, the engine file's size and sha256, and build facts.
Writes are atomic (temporary file, fsync, rename) and the manifest is written last, so an entry exists only when
both files are complete. An entry whose manifest is unreadable, whose key differs from the one asked for (e.g.
another torch / torch-tensorrt / TensorRT version) or whose engine file does not match the manifest is deleted
with a warning and never loaded; the caller rebuilds it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from ...io.hashing import file_sha256

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
ENGINE_SUFFIXES = {"torch": ".pt2", "onnx": ".engine"}  # torch.export archive (torch_tensorrt.save); TensorRT plan
T = TypeVar("T")


def default_cache_dir() -> Path:
    """``$SEMSAM_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/semsam_ros/engines``, else ``~/.cache/semsam_ros/engines``."""
    if env := os.environ.get("SEMSAM_ENGINE_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "semsam_ros" / "engines"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "unknown"


@dataclass(frozen=True)
class EngineKey:
    """Everything a compiled engine depends on; two engines are interchangeable only when their keys are equal."""

    part: str  # "encoder" or "decoder"
    weights_sha256: str
    precision: str  # "fp32" | "fp16" | "bf16"
    input_shape: tuple[int, int]  # padded model input (H, W)
    bucket: int | None  # prompt count of a decoder engine; None for the encoder
    model_code: str  # digest of the model source, so a code change invalidates engines
    torch: str
    torch_tensorrt: str
    tensorrt: str
    gpu: str
    compute_capability: str  # "major.minor"
    route: str = "torch"  # "torch" (Torch-TensorRT) or "onnx" (TensorRT's ONNX parser)

    @property
    def folder(self) -> str:
        """Relative directory: one per weights file and GPU model."""
        cc = self.compute_capability.replace(".", "")
        return f"{self.weights_sha256[:16]}/{_slug(self.gpu)}-sm{cc}"

    @property
    def stem(self) -> str:
        h, w = self.input_shape
        bucket = "image" if self.bucket is None else f"b{self.bucket}"
        route = "" if self.route == "torch" else f"-{self.route}"
        return f"{self.part}-{h}x{w}-{bucket}-{self.precision}{route}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems do not open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s directory (same suffix), fsync it, rename it over
    ``path``. On any error the temporary file is removed and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class EngineCache:
    """Engines on disk under ``root``; see the module docstring for the layout and the validation rules."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def engine_path(self, key: EngineKey) -> Path:
        return self.root / key.folder / (key.stem + ENGINE_SUFFIXES[key.route])

    def manifest_path(self, key: EngineKey) -> Path:
        return self.root / key.folder / (key.stem + ".json")

    def _discard(self, key: EngineKey, reason: str) -> None:
        log.warning("engine cache: discarding %s (%s); it will be rebuilt", self.engine_path(key), reason)
        self.manifest_path(key).unlink(missing_ok=True)
        self.engine_path(key).unlink(missing_ok=True)

    def manifest(self, key: EngineKey) -> dict[str, Any] | None:
        """The entry's manifest when it exists, parses and matches ``key`` (its engine file is not checked)."""
        try:
            data = json.loads(self.manifest_path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT and data.get("key") == key.to_dict():
            return data
        return None

    def lookup(self, key: EngineKey, load: Callable[[Path], T]) -> T | None:
        """The loaded engine for ``key``, or None when there is no valid entry (an invalid one is deleted)."""
        engine, manifest_path = self.engine_path(key), self.manifest_path(key)
        if not manifest_path.exists():
            if engine.exists():
                self._discard(key, "engine file without manifest: an interrupted write")
            return None
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self._discard(key, f"unreadable manifest: {exc}")
            return None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("key"), dict):
            self._discard(key, "manifest in an unknown format")
            return None
        if data["key"] != key.to_dict():
            wanted = key.to_dict()
            diff = [
                f"{k}: cached {data['key'].get(k)!r}, now {v!r}" for k, v in wanted.items() if data["key"].get(k) != v
            ]
            self._discard(key, "built for a different setup: " + "; ".join(diff or ["unknown fields"]))
            return None
        if not engine.is_file():
            self._discard(key, "engine file missing")
            return None
        size = engine.stat().st_size
        if size != data.get("size_bytes") or file_sha256(engine) != data.get("sha256"):
            self._discard(
                key, f"engine file does not match its manifest (size {size}, recorded {data.get('size_bytes')})"
            )
            return None
        try:
            return load(engine)
        except Exception as exc:  # a loader raises whatever its format library raises
            self._discard(key, f"cannot be loaded: {type(exc).__name__}: {exc}")
            return None

    def store(self, key: EngineKey, save: Callable[[Path], None], info: Mapping[str, Any] | None = None) -> Path:
        """Write an engine with ``save(path)`` and then its manifest, both atomically; returns the engine path."""
        engine = self.engine_path(key)
        atomic_write(engine, save)
        manifest = {
            "format": MANIFEST_FORMAT,
            "key": key.to_dict(),
            "sha256": file_sha256(engine),
            "size_bytes": engine.stat().st_size,
            **(info or {}),
        }
        text = json.dumps(manifest, indent=2, sort_keys=True)
        atomic_write(self.manifest_path(key), lambda p: p.write_text(text, encoding="utf-8"))
        return engine
