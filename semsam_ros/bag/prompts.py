"""Prompts of a YAML file, ``[IMAGE_TOPIC=]TOPIC`` maps and the default topic names of the bag tools."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semsam_ros.bag.reader import BagError
from semsam_ros.ros.convert import PromptRequest
from semsam_ros.ros.outputs import OUTPUT_TYPES
from semsam_ros.text import one_line
from semsam_ros.types import LEVELS

_PROMPT_KEYS = ("id", "points", "boxes", "levels", "text")


def load_prompts(path: str | Path, image_topics: Sequence[str], default_levels: Sequence[int] = ()
                 ) -> dict[str, list[PromptRequest]]:
    """Prompts of a YAML file (schema in docs/bag.md): a list for every image topic, or image topic -> list.

    ``default_levels`` are the levels of an entry that names none (empty: all six).
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BagError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BagError(f"cannot read prompt file {path}: {one_line(str(exc))}") from None
    if isinstance(data, list):
        data = {topic: data for topic in image_topics}
    if not isinstance(data, dict) or not data:
        raise BagError(f"{path}: expected a list of prompts, or a mapping from image topic to a list of prompts")
    prompts = {}
    for topic, entries in data.items():
        if topic not in image_topics:
            raise BagError(f"{path}: {topic!r} is not one of the image topics ({', '.join(image_topics)})")
        if not isinstance(entries, list):
            raise BagError(f"{path}: {topic}: expected a list of prompts")
        prompts[topic] = [_yaml_prompt(entry, k, default_levels, f"{path}: {topic}[{k}]")
                          for k, entry in enumerate(entries)]
    return prompts


def _coordinates(value: Any, columns: int, where: str, what: str) -> np.ndarray:
    """(N, columns) finite floats of a YAML list of coordinate lists."""
    try:
        array = np.array(value if value is not None else [], dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros((0, 0))
    if array.size == 0 and array.ndim == 1:
        return array.reshape(0, columns)
    if array.ndim != 2 or array.shape[1] != columns or not np.isfinite(array).all():
        raise BagError(f"{where}: {what} must be a list of [{', '.join(['x', 'y', 'x1', 'y1'][:columns])}...] "
                       f"lists of {columns} numbers, got {value!r}")
    return array


def _yaml_prompt(entry: Any, index: int, default_levels: Sequence[int], where: str) -> PromptRequest:
    if not isinstance(entry, dict):
        raise BagError(f"{where}: a prompt is a mapping with keys among {', '.join(_PROMPT_KEYS)}")
    unknown = sorted(set(entry) - set(_PROMPT_KEYS))
    if unknown:
        raise BagError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(_PROMPT_KEYS)})")
    points = _coordinates(entry.get("points"), 2, where, "points")
    boxes = _coordinates(entry.get("boxes"), 4, where, "boxes")
    text = entry.get("text", "")
    levels = entry.get("levels", list(default_levels))
    prompt_id = entry.get("id", index)
    if not isinstance(text, str):
        raise BagError(f"{where}: text must be a string, got {text!r}")
    if not (isinstance(levels, list) and all(type(v) is int and v in LEVELS for v in levels)
            and len(set(levels)) == len(levels)):
        raise BagError(f"{where}: levels must be a list of distinct levels among 1..6, got {levels!r}")
    if type(prompt_id) is not int or prompt_id < 0:
        raise BagError(f"{where}: id must be an integer >= 0, got {prompt_id!r}")
    if len(points) == 0 and len(boxes) == 0 and not text:
        raise BagError(f"{where}: a prompt needs at least one point, box or text")
    return PromptRequest(prompt_id, points, boxes, tuple(sorted(levels)), text)


def parse_topic_map(values: Sequence[str], image_topics: Sequence[str], what: str) -> dict[str, str]:
    """``[IMAGE_TOPIC=]TOPIC`` values -> {image topic: topic}; a bare TOPIC applies to every image topic."""
    mapping: dict[str, str] = {}
    for value in values:
        image, separator, topic = value.rpartition("=")
        if separator and image not in image_topics:
            raise BagError(f"{what} {value!r}: {image!r} is not one of the --image-topic values")
        if not topic:
            raise BagError(f"{what} {value!r} names no topic")
        for target in [image] if separator else image_topics:
            if target in mapping:
                raise BagError(f"two {what} values for image topic {target}")
            mapping[target] = topic
    return mapping


def output_topics(image_topic: str, image_topics: Sequence[str] = ()) -> dict[str, str]:
    """Default output topic of each kind (``ros.outputs.OUTPUT_TYPES``) for an image topic processed together with
    ``image_topics``: ``<image topic>/<kind>``, where a trailing /compressed is dropped unless the raw topic is among
    ``image_topics`` too (then the compressed topic keeps it: ``/cam/image/compressed/segments``)."""
    base = image_topic.removesuffix("/compressed")
    if base != image_topic and base in image_topics:
        base = image_topic
    return {kind: f"{base}/{kind}" for kind in OUTPUT_TYPES}


def default_camera_info_topic(image_topic: str) -> str:
    """``/cam/color/image_raw[/compressed]`` -> ``/cam/color/camera_info`` (the image_transport convention)."""
    parent = image_topic.removesuffix("/compressed").rsplit("/", 1)[0]
    return f"{parent}/camera_info"

