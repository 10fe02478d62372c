"""Semantics: object and part vocabularies, an open-vocabulary region labeller, part-of links, text selection.

Importing this package imports neither torch nor ``transformers``: the labeller's names load on first use, and
building a :class:`RegionLabeller` needs ``transformers``.
"""
from __future__ import annotations

import importlib
from typing import Any

from ..types import DEFAULT_CLIP_MODEL, UNKNOWN_LABEL, kind_of_level
from .hierarchy import ancestors, build_hierarchy, canonical_key
from .select import Selection, parse_query, select
from .vocab import Vocabulary, default_vocabulary, default_vocabulary_path, vocabulary_from

DEFAULT_MODEL = DEFAULT_CLIP_MODEL  # the name this package exported first
_LABELLER = ("CacheInfo", "RegionLabeller", "RegionScores", "annotate", "crop_region")

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_MODEL",
    "UNKNOWN_LABEL",
    *_LABELLER,
    "Selection",
    "Vocabulary",
    "ancestors",
    "build_hierarchy",
    "canonical_key",
    "default_vocabulary",
    "default_vocabulary_path",
    "kind_of_level",
    "parse_query",
    "select",
    "vocabulary_from",
]


def __getattr__(name: str) -> Any:
    """The labeller's names, imported (with torch) on first use."""
    if name in _LABELLER:
        return getattr(importlib.import_module(".labeller", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
