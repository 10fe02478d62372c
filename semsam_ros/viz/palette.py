"""Deterministic, well separated colours per segment id, shared by the overlay image, clouds and markers."""
from __future__ import annotations

import numpy as np

_GOLDEN = 0.618033988749895
_SATURATIONS = np.array([0.85, 0.6, 0.95])
_VALUES = np.array([0.95, 0.8, 0.65])


def segment_colors(segment_ids: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB for integer segment ids: hue steps by the golden ratio, saturation/value cycle by 3."""
    ids = np.asarray(segment_ids, dtype=np.int64).ravel()
    h = (ids * _GOLDEN) % 1.0 * 6.0
    s = _SATURATIONS[ids % 3]
    v = _VALUES[(ids // 3) % 3]
    sector = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ])
    rgb = table[sector, np.arange(ids.size)]
    return np.round(rgb * 255).astype(np.uint8)


def segment_color(segment_id: int) -> tuple[int, int, int]:
    """(r, g, b) in 0..255 of one segment id; the same as ``segment_colors([segment_id])[0]``."""
    r, g, b = segment_colors(np.array([segment_id]))[0]
    return int(r), int(g), int(b)
