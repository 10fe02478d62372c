"""The cameras one node serves: each camera's topics, transport and frame-rate cap, and where its outputs go.

With the ``cameras`` parameter empty the node has one unnamed camera on today's topics (``image``,
``camera_info``, ``depth``; outputs ``~/segments``...). With ``cameras: [head, wrist]`` each camera ``c`` reads
the parameters ``c.image``, ``c.camera_info``, ``c.depth``, ``c.image_transport`` and ``c.max_rate_hz``
(defaults: ``c/image``, ``c/camera_info``, ``c/depth``, the node's ``image_transport``, no cap) and publishes
under ``~/c/``. Torch- and rclpy-free.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
TRANSPORTS = ("raw", "compressed")


@dataclass(frozen=True)
class CameraParams:
    """One camera: its name ('' for the single camera of a node without ``cameras``) and inputs."""

    name: str = ""
    image: str = "image"
    camera_info: str = "camera_info"
    depth: str = "depth"
    image_transport: str = "raw"
    max_rate_hz: float = 0.0  # frames closer than 1 / max_rate_hz (by stamp) to the last accepted one are skipped

    @property
    def image_topic(self) -> str:
        """The subscribed image topic (``<image>/compressed`` with the compressed transport)."""
        return f"{self.image}/compressed" if self.image_transport == "compressed" else self.image

    def output(self, name: str) -> str:
        """The topic of output ``name``: ``~/<name>``, or ``~/<camera>/<name>`` for a named camera."""
        return f"~/{self.name}/{name}" if self.name else f"~/{name}"

    def accepts(self, stamp_ns: int, last_ns: int | None) -> bool:
        """Whether a frame stamped ``stamp_ns`` passes the rate cap after an accepted one at ``last_ns``."""
        if self.max_rate_hz <= 0 or last_ns is None:
            return True
        return stamp_ns - last_ns >= 1e9 / self.max_rate_hz or stamp_ns < last_ns  # a stamp going back: a new run


CAMERA_FIELDS = tuple(f.name for f in fields(CameraParams) if f.name != "name")
"""The per-camera parameters ``<camera>.<field>``."""


def camera_defaults(name: str, image_transport: str = "raw") -> CameraParams:
    """The parameters of camera ``name`` when none are given: its topics under ``<name>/``."""
    if not name:
        return CameraParams(image_transport=image_transport)
    return CameraParams(name, f"{name}/image", f"{name}/camera_info", f"{name}/depth", image_transport)


def is_camera_key(key: str) -> bool:
    """Whether a parameter name is a per-camera one (``<camera>.<field>``)."""
    camera, _, field = key.partition(".")
    return bool(camera) and field in CAMERA_FIELDS


def build_cameras(names: list[str], values: Mapping[str, Any], image_transport: str = "raw") -> list[CameraParams]:
    """The cameras of a node: one unnamed camera when ``names`` is empty, else one per name with the values of
    ``<name>.<field>`` in ``values`` over :func:`camera_defaults`. ValueError naming every problem (bad or repeated
    names, a value for a camera that is not listed, a bad transport or rate)."""
    reasons = []
    if len(set(names)) != len(names):
        reasons.append(f"cameras must be distinct names, got {list(names)}")
    reasons += [f"cameras: name {n!r} must match {CAMERA_NAME.pattern}" for n in names if not CAMERA_NAME.fullmatch(n)]
    unlisted = sorted(k for k in values if is_camera_key(k) and k.partition(".")[0] not in names)
    if unlisted:
        reasons.append(f"parameters for cameras not in the cameras list: {', '.join(unlisted)}")
    cameras = []
    for name in names or [""]:
        given = {f: values[f"{name}.{f}"] for f in CAMERA_FIELDS if name and f"{name}.{f}" in values}
        camera = CameraParams(**{**camera_defaults(name, image_transport).__dict__, **given})
        if camera.image_transport not in TRANSPORTS:
            reasons.append(f"{name}.image_transport must be raw or compressed, got {camera.image_transport!r}")
        if not float(camera.max_rate_hz) >= 0:
            reasons.append(f"{name}.max_rate_hz must be >= 0 (0: no cap), got {camera.max_rate_hz}")
        cameras.append(camera)
    if reasons:
        raise ValueError("; ".join(reasons))
    return cameras


def camera_parameters(names: list[str], path: str | Path) -> dict[str, Any]:
    """The node parameters of cameras ``names`` from a cameras YAML (``<camera>: {image: ..., depth: ...}``, fields
    as :data:`CAMERA_FIELDS`): ``cameras`` and every ``<camera>.<field>`` the file gives. ValueError naming the
    file when a listed camera is missing from it or a value is unusable."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read cameras file {path}: {exc}") from None
    missing = [n for n in names if not isinstance(data.get(n), dict)]
    if missing:
        raise ValueError(f"{path}: no entry for camera(s) {', '.join(missing)} (has: {', '.join(map(str, data))})")
    values = {f"{n}.{k}": v for n in names for k, v in data[n].items()}
    unknown = sorted(k for k in values if not is_camera_key(k))
    if unknown:
        raise ValueError(f"{path}: unknown camera field(s) {', '.join(unknown)}; known: {', '.join(CAMERA_FIELDS)}")
    try:
        build_cameras(names, values)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return {"cameras": list(names), **values}
