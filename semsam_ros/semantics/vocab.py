"""Object and part vocabularies for the region labeller, and where the shipped default lives.

A :class:`Vocabulary` is immutable and carries a content digest: the labeller recomputes text embeddings only
when the digest (names or templates) changes. Vocabularies come from YAML (``config/vocabulary.yaml`` is the
default), from plain dicts (node parameters, service requests) or from code.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from semsam_ros.io.resources import find_data_file

VOCABULARY_FILE = "vocabulary.yaml"

_FIELDS = ("objects", "parts", "object_templates", "part_templates", "part_in_object_templates")
# the placeholders each template list must use
_PLACEHOLDERS = {
    "object_templates": ("{object}",),
    "part_templates": ("{part}",),
    "part_in_object_templates": ("{part}", "{object}"),
}


def _clean(values: Iterable[str], what: str) -> tuple[str, ...]:
    """Stripped, de-duplicated (first occurrence kept) non-empty strings."""
    if isinstance(values, str):
        raise TypeError(f"{what} must be a list of strings, not a single string")
    out: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"{what}: {value!r} is not a string")
        value = " ".join(value.split())
        if not value:
            raise ValueError(f"{what}: empty name or template")
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError(f"{what} is empty")
    return tuple(out)


@dataclass(frozen=True)
class Vocabulary:
    """Names the labeller can give: ``objects`` for levels 1-3, ``parts`` for levels 4-6.

    Templates turn a name into prompts (``{object}``, ``{part}`` placeholders); every name is embedded with each
    template of its list and the embeddings are averaged. ``part_in_object_templates`` name a part in the
    context of its parent object ("a photo of the {part} of a {object}."), ``part_templates`` a part alone.
    """

    objects: tuple[str, ...]
    parts: tuple[str, ...]
    object_templates: tuple[str, ...] = ("a photo of a {object}.",)
    part_templates: tuple[str, ...] = ("a photo of a {part}.",)
    part_in_object_templates: tuple[str, ...] = ("a photo of the {part} of a {object}.",)
    digest: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in _FIELDS:
            object.__setattr__(self, name, _clean(getattr(self, name), name))
        for name, placeholders in _PLACEHOLDERS.items():
            for template in getattr(self, name):
                missing = [p for p in placeholders if p not in template]
                if missing:
                    raise ValueError(f"{name}: template {template!r} lacks {', '.join(missing)}")
        text = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        object.__setattr__(self, "digest", hashlib.sha256(text.encode("utf-8")).hexdigest())

    def to_dict(self) -> dict[str, list[str]]:
        """Plain lists, the format of the YAML file and of :meth:`from_dict`."""
        return {name: list(getattr(self, name)) for name in _FIELDS}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: Vocabulary | None = None) -> Vocabulary:
        """A vocabulary from a mapping with any of the keys of :meth:`to_dict`.

        Keys that are absent, ``None`` or an empty list keep the value of ``base`` (default: the shipped
        default vocabulary), so node parameters can replace only the parts, or only the objects.
        """
        unknown = set(values) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown vocabulary keys {sorted(unknown)}; expected some of {list(_FIELDS)}")
        merged = (base if base is not None else default_vocabulary()).to_dict()
        for name in _FIELDS:
            value = values.get(name)
            if value is not None and len(value) > 0:
                merged[name] = value
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, base: Vocabulary | None = None) -> Vocabulary:
        """A vocabulary from a YAML file holding a mapping as :meth:`to_dict` writes it (missing keys: ``base``)."""
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping with keys {list(_FIELDS)}")
        return cls.from_dict(values, base=base)

    def to_yaml(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as YAML, readable by :meth:`from_yaml`."""
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False, allow_unicode=True)


def default_vocabulary_path() -> Path:
    """The shipped ``config/vocabulary.yaml``; FileNotFoundError lists where it was looked for."""
    return find_data_file(f"config/{VOCABULARY_FILE}")


def default_vocabulary() -> Vocabulary:
    """The shipped default vocabulary (everyday objects a mobile manipulator meets, and their common parts)."""
    path = default_vocabulary_path()
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    return Vocabulary(**values)


def vocabulary_from(file: str | os.PathLike | None, objects: Iterable[str] | None = None,
                    parts: Iterable[str] | None = None) -> Vocabulary:
    """The vocabulary of ``file`` (None or '': the shipped one) with its object / part names replaced by non-empty
    ``objects`` / ``parts`` (CLI --vocabulary/--objects/--parts, node parameters vocabulary*). ValueError naming
    the problem when it cannot be built."""
    try:
        base = Vocabulary.from_yaml(file) if file else default_vocabulary()
        return Vocabulary.from_dict({"objects": list(objects or ()), "parts": list(parts or ())}, base=base)
    except FileNotFoundError as exc:
        raise ValueError(f"vocabulary not found: {exc.filename or exc}") from None
    except (OSError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"bad vocabulary {file or '(shipped)'}: {exc}") from None
