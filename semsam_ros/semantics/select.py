"""Text-selected masks: "handle", "mug handle", "the lid of the pot", optionally under a pixel."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from ..types import UNKNOWN_LABEL, Segment
from .hierarchy import ancestors

if TYPE_CHECKING:
    from .labeller import RegionLabeller

_ARTICLES = {"a", "an", "the"}


@dataclass
class Selection:
    """One selected mask: ``score = similarity + label_weight * match``."""

    segment: Segment
    score: float
    similarity: float
    match: float


def _words(text: str) -> tuple[str, ...]:
    """Lower-case words, articles dropped, a possessive ``'s`` kept as its own word."""
    text = re.sub(r"'s\b", " 's", text.lower())
    return tuple(w for w in re.findall(r"[^\W_]+|'s", text) if w not in _ARTICLES)


def parse_query(text: str, names: Iterable[str] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a query into (head words, context words): what is wanted, and what it is part of.

    A query that is one of ``names`` is all head. "handle of the mug" and "mug's handle" give (handle, mug).
    Otherwise the head is the longest trailing run of words that is one of ``names`` ("mug handle" ->
    (handle, mug) when "handle" is a name), else the last word. Articles are ignored.
    """
    words = _words(text)
    if not words:
        raise ValueError(f"empty query {text!r}")
    known = {_words(n) for n in names}
    if words in known:
        head, context = words, ()
    elif "'s" in words:
        i = words.index("'s")
        head, context = words[i + 1 :], words[:i]
    elif "of" in words:
        i = words.index("of")
        head, context = words[:i], words[i + 1 :]
    else:
        split = next((i for i in range(len(words)) if words[i:] in known), len(words) - 1)
        head, context = words[split:], words[:split]
    if not head:
        raise ValueError(f"query {text!r} names nothing to select")
    return head, tuple(w for w in context if w != "'s")


def _same(label: str, words: tuple[str, ...]) -> bool:
    """True when a known label and the query words name the same thing (one's words contain the other's)."""
    if label == UNKNOWN_LABEL or not words:
        return False
    label_words = set(_words(label))
    return label_words <= set(words) or set(words) <= label_words


def select(
    segments: Sequence[Segment],
    text: str,
    labeller: RegionLabeller | None = None,
    point: tuple[float, float] | None = None,
    top_k: int = 5,
    image: np.ndarray | None = None,
    label_weight: float = 0.1,
) -> list[Selection]:
    """The masks of one frame that best match ``text``, best first (at most ``top_k``).

    ``segments`` is the whole frame (labelled, part-of links from ``build_hierarchy``); with ``point`` (x, y)
    only the masks holding that pixel compete, so "handle" with a click on a mug gives that mug's handle.
    ``match`` is 1 when the segment's label is the query's head (see :func:`parse_query`); when the query
    also names a context ("mug handle") it is 1 with an ancestor labelled so, 2/3 without, and 1/3 for a
    segment inside that context whose label is not the head. ``similarity`` is the
    CLIP cosine between the query ("a photo of a {text}.") and the region, when a ``labeller`` is given (its
    cached region embeddings are reused; ``image`` encodes segments it has not seen); without one, masks with
    ``match == 0`` are left out.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    candidates = list(segments)
    if point is not None:
        col, row = int(np.floor(point[0])), int(np.floor(point[1]))
        candidates = [
            s for s in candidates
            if 0 <= row < s.mask.shape[0] and 0 <= col < s.mask.shape[1] and s.mask[row, col]
        ]
    if not candidates:
        return []
    names = {s.label for s in segments} - {UNKNOWN_LABEL}
    if labeller is not None:
        names |= set(labeller.vocabulary.objects) | set(labeller.vocabulary.parts)
    head, context = parse_query(text, names)
    by_id = {s.id: s for s in segments}
    matches = []
    for s in candidates:
        hit = float(_same(s.label, head))
        if context:
            in_context = any(_same(a.label, context) for a in ancestors(s, by_id))
            hit = (2.0 * hit + float(in_context)) / 3.0
        matches.append(hit)
    if labeller is not None:
        query = labeller.query_embeddings([text])[0]
        similarity = labeller.region_embeddings(candidates, image=image) @ query
    else:
        similarity = np.zeros(len(candidates), dtype=np.float32)
    out = [
        Selection(segment=s, score=float(sim) + label_weight * m, similarity=float(sim), match=m)
        for s, sim, m in zip(candidates, similarity, matches)
        if labeller is not None or m > 0
    ]
    out.sort(key=lambda sel: -sel.score)
    return out[:top_k]
