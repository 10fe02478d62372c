"""ROS 2 parameter files for the node without ROS: ``<node>: {ros__parameters: {...}}`` -> NodeParams.

Torch-free and rclpy-free, so the bag tools read the node's own files (``config/semsam.yaml``) as the node does.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from semsam_ros.ros.core import NodeParams

NODE_NAME = "/semsam"  # fully qualified name of the node the launch files start
_ROS = "ros__parameters"


def _matches(key: str, node: str) -> bool:
    """Whether a file's node key (``/**``, ``semsam``, ``/ns/*``, ``/**/semsam``) names ``node`` (fully qualified)."""
    pattern = "/" + key.lstrip("/")
    regex = re.escape(pattern).replace(r"/\*\*/", "(/.*)?/").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return re.fullmatch(regex, node) is not None


def read_params_file(path: str | Path, node: str = NODE_NAME) -> dict[str, Any]:
    """The parameters a params file gives ``node``: every matching ``ros__parameters`` block in file order (later
    ones win), or the file itself when it is a flat mapping. ValueError naming the file when it cannot be used."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read parameter file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of node parameters")
    blocks = {key: value for key, value in data.items() if isinstance(value, dict) and _ROS in value}
    if not blocks:
        return data
    values: dict[str, Any] = {}
    for key, block in blocks.items():
        if _matches(str(key), node):
            if not isinstance(block[_ROS], dict):
                raise ValueError(f"{path}: {key}: {_ROS} must be a mapping")
            values.update(block[_ROS])
    return values


def load_node_params(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                     node: str = NODE_NAME) -> NodeParams:
    """NodeParams from a params file (None: the defaults), then ``overrides``; ValueError with every reason."""
    values = read_params_file(path, node) if path is not None else {}
    values.update(overrides or {})
    try:
        params = NodeParams.from_dict(values)
        reasons = params.validate()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"node parameters: {exc}") from None
    if reasons:
        raise ValueError("node parameters: " + "; ".join(reasons))
    return params
