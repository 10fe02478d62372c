"""The one sha256 helper for files (checkpoints, downloads, cached engines)."""
from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping

CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def tensors_sha256(tensors: Mapping[str, Any]) -> str:
    """Hex sha256 of torch tensors by content: name, dtype, shape and bytes of each, in sorted name order (so the
    same weights give the same digest whatever file or key order they came from)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(-1).numpy().view("u1") if tensor.numel() else b"")
    return digest.hexdigest()
