"""Engine cache: keys and paths, valid entries loaded without rebuilding, invalid entries discarded, atomic writes."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from semsam_ros.inference.backends.engine_cache import EngineCache, EngineKey, atomic_write, default_cache_dir

KEY = EngineKey(
    part="decoder",
    weights_sha256="ab" * 32,
    precision="fp16",
    input_shape=(640, 960),
    bucket=8,
    model_code="0123456789abcdef",
    torch="2.8.0",
    torch_tensorrt="2.8.0",
    tensorrt="10.3.0",
    gpu="Orin (nvgpu)",
    compute_capability="8.7",
)


class Counting:
    """A fake engine format: the 'engine' is a byte string; counts saves and loads."""

    def __init__(self, payload: bytes = b"engine-bytes") -> None:
        self.payload, self.saves, self.loads = payload, 0, 0

    def save(self, path: Path) -> None:
        self.saves += 1
        path.write_bytes(self.payload)

    def load(self, path: Path) -> bytes:
        self.loads += 1
        return path.read_bytes()


def get_or_build(cache: EngineCache, key: EngineKey, fmt: Counting) -> bytes:
    engine = cache.lookup(key, fmt.load)
    if engine is None:
        cache.store(key, fmt.save)
        engine = cache.lookup(key, fmt.load)
    return engine


def test_key_names_every_dependency():
    cache = EngineCache("/cache")
    assert cache.engine_path(KEY) == Path("/cache/abababababababab/orin-nvgpu-sm87/decoder-640x960-b8-fp16.pt2")
    assert cache.manifest_path(KEY).name == "decoder-640x960-b8-fp16.json"
    encoder = dataclasses.replace(KEY, part="encoder", bucket=None)
    assert cache.engine_path(encoder).name == "encoder-640x960-image-fp16.pt2"
    data = KEY.to_dict()
    assert data["input_shape"] == [640, 960] and json.loads(json.dumps(data)) == data
    assert set(data) == {f.name for f in dataclasses.fields(EngineKey)}


def test_valid_entry_is_loaded_and_never_rebuilt(tmp_path):
    cache, fmt = EngineCache(tmp_path), Counting()
    assert cache.lookup(KEY, fmt.load) is None  # a miss is silent
    assert get_or_build(cache, KEY, fmt) == b"engine-bytes"
    assert get_or_build(cache, KEY, fmt) == b"engine-bytes"
    assert fmt.saves == 1 and fmt.loads == 2
    manifest = cache.manifest(KEY)
    assert manifest["key"] == KEY.to_dict() and manifest["size_bytes"] == len(b"engine-bytes")
    assert len(manifest["sha256"]) == 64
    assert sorted(p.name for p in cache.engine_path(KEY).parent.iterdir()) == [
        "decoder-640x960-b8-fp16.json",
        "decoder-640x960-b8-fp16.pt2",
    ]  # no temporary files left


def test_store_records_extra_information(tmp_path):
    cache = EngineCache(tmp_path)
    cache.store(KEY, Counting().save, {"build_seconds": 12.5, "accuracy": {"mean_mask_iou": 0.995}})
    assert cache.manifest(KEY)["build_seconds"] == 12.5
    assert cache.manifest(KEY)["accuracy"] == {"mean_mask_iou": 0.995}


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda c: c.engine_path(KEY).write_bytes(b"engine-bytez"), "does not match its manifest"),
        (lambda c: c.engine_path(KEY).write_bytes(b"engine"), "does not match its manifest"),
        (lambda c: c.engine_path(KEY).unlink(), "engine file missing"),
        (lambda c: c.manifest_path(KEY).write_text("{not json"), "unreadable manifest"),
        (lambda c: c.manifest_path(KEY).write_text('{"format": 99}'), "unknown format"),
        (lambda c: c.manifest_path(KEY).unlink(), "interrupted write"),
    ],
)
def test_corrupt_entry_is_discarded_with_a_warning_and_rebuilt(tmp_path, caplog, damage, reason):
    cache, fmt = EngineCache(tmp_path), Counting()
    get_or_build(cache, KEY, fmt)
    damage(cache)
    loads = fmt.loads
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(KEY, fmt.load) is None
    assert fmt.loads == loads, "a damaged entry must never reach the loader"
    assert reason in caplog.text and "will be rebuilt" in caplog.text
    assert not cache.engine_path(KEY).exists() and not cache.manifest_path(KEY).exists()
    assert get_or_build(cache, KEY, fmt) == b"engine-bytes" and fmt.saves == 2


def test_entry_for_another_setup_is_discarded_naming_the_difference(tmp_path, caplog):
    cache, fmt = EngineCache(tmp_path), Counting()
    get_or_build(cache, KEY, fmt)
    upgraded = dataclasses.replace(KEY, torch_tensorrt="2.9.0", tensorrt="10.13.0")
    assert cache.engine_path(upgraded) == cache.engine_path(KEY)  # same slot, different environment
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(upgraded, fmt.load) is None
    assert "torch_tensorrt: cached '2.8.0', now '2.9.0'" in caplog.text
    assert "tensorrt: cached '10.3.0', now '10.13.0'" in caplog.text
    assert cache.manifest(upgraded) is None and not cache.engine_path(KEY).exists()


def test_entry_the_loader_rejects_is_discarded(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    cache.store(KEY, Counting().save)

    def broken(path: Path) -> bytes:
        raise RuntimeError("deserialization failed")

    with caplog.at_level(logging.WARNING):
        assert cache.lookup(KEY, broken) is None
    assert "cannot be loaded: RuntimeError: deserialization failed" in caplog.text
    assert not cache.engine_path(KEY).exists()


def test_failed_save_leaves_the_previous_entry_intact(tmp_path):
    cache, fmt = EngineCache(tmp_path), Counting()
    get_or_build(cache, KEY, fmt)

    def failing(path: Path) -> None:
        path.write_bytes(b"half an eng")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cache.store(KEY, failing)
    assert cache.lookup(KEY, fmt.load) == b"engine-bytes"
    assert len(list(cache.engine_path(KEY).parent.iterdir())) == 2


def test_atomic_write_keeps_the_suffix_for_format_libraries(tmp_path):
    seen = []
    atomic_write(tmp_path / "a" / "x.pt2", lambda p: (seen.append(p), p.write_text("ok")))
    assert seen[0].suffix == ".pt2" and seen[0].parent == tmp_path / "a" and not seen[0].exists()
    assert (tmp_path / "a" / "x.pt2").read_text() == "ok"


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMSAM_ENGINE_CACHE", str(tmp_path / "engines"))
    assert default_cache_dir() == tmp_path / "engines"
    monkeypatch.delenv("SEMSAM_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "semsam_ros" / "engines"
    assert EngineCache().root == tmp_path / "semsam_ros" / "engines"
