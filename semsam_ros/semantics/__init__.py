"""Semantics: object and part vocabularies, an open-vocabulary region labeller, part-of links, text selection.

Importing this package does not need ``transformers``; building a :class:`RegionLabeller` does.
"""
from __future__ import annotations

from .hierarchy import ancestors, build_hierarchy, canonical_key
from .labeller import (
    DEFAULT_MODEL,
    UNKNOWN_LABEL,
    CacheInfo,
    RegionLabeller,
    RegionScores,
    annotate,
    crop_region,
    kind_of_level,
)
from .select import Selection, parse_query, select
from .vocab import Vocabulary, default_vocabulary, default_vocabulary_path

__all__ = [
    "DEFAULT_MODEL",
    "UNKNOWN_LABEL",
    "CacheInfo",
    "RegionLabeller",
    "RegionScores",
    "Selection",
    "Vocabulary",
    "ancestors",
    "annotate",
    "build_hierarchy",
    "canonical_key",
    "crop_region",
    "default_vocabulary",
    "default_vocabulary_path",
    "kind_of_level",
    "parse_query",
    "select",
]
