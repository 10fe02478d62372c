"""The node's parameters: every name with its default, documentation and validation, and ROS 2 parameter files.

Torch- and rclpy-free: the node declares its ROS parameters from ``NodeParams``, and the bag tools read the node's
own files (``config/semsam.yaml``: ``<node>: {ros__parameters: {...}}``) exactly as the node does.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from semsam_ros.ros.cameras import build_cameras, is_camera_key
from semsam_ros.types import BACKENDS, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_LONG_SIDE, LEVELS, PRECISIONS

MODES = ("prompts", "auto", "both")
VOCABULARY_PARAMS = ("vocabulary", "vocabulary_objects", "vocabulary_parts")
NODE_NAME = "/semsam"  # fully qualified name of the node the launch files start
_ROS = "ros__parameters"


def _param(default: Any, doc: str) -> Any:
    """A NodeParams field with its documentation (used for the ROS parameter descriptors).

    A list defaulting to empty is a list of strings (the node declares its ROS type explicitly: an empty list
    says nothing about its element type).
    """
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class NodeParams:
    """Every node parameter with its default (mirrored in config/semsam.yaml); ``validate`` explains bad values.

    Parameters in ``RUNTIME_PARAMS`` apply at once when set; the others at the next configure/activate.
    """

    checkpoint: str = _param("", "model weights: an official .pth or our .safetensors (required)")
    model_config: str = _param("", "'' (inferred from the weights), swint, swinl or an official-format YAML path")
    device: str = _param("auto", "auto (cuda when available), cpu, cuda or cuda:N")
    backend: str = _param("eager", "eager, compile or tensorrt")
    precision: str = _param("fp32", "fp32, fp16 or bf16")
    input_size: int = _param(640, "short side of the image given to the encoder, pixels")
    max_long_side: int = _param(
        DEFAULT_MAX_LONG_SIDE, "largest long side of the image given to the encoder, pixels (after the short side is "
                               "resized to input_size); a wider image is rejected (cause too_long)")
    max_image_pixels: int = _param(
        DEFAULT_MAX_IMAGE_PIXELS, "largest image (width x height) decoded, checked from the header before decoding; "
                                  "larger images and camera_infos are rejected (cause too_large)")
    cameras: list[str] = _param(
        [], "camera names (one model serves them all, outputs under ~/<camera>/); per camera <camera>.image, "
            ".camera_info, .depth, .image_transport, .max_rate_hz (docs/ros.md); empty: one camera on 'image'")
    image_transport: str = _param(
        "raw", "raw: sensor_msgs/Image on 'image'; compressed: sensor_msgs/CompressedImage on 'image/compressed'")
    use_depth: bool = _param(
        False, "also subscribe 'depth' (registered to the image) and 'camera_info', synchronised, for 3D")
    sync_slop: float = _param(0.05, "ApproximateTime tolerance between image, depth and camera_info, s")
    input_reliability: str = _param("best_effort", "QoS reliability of the inputs: best_effort or reliable")
    input_depth: int = _param(5, "QoS history depth of the inputs")
    mode: str = _param("prompts", "prompts, auto (segment everything at auto_rate_hz) or both")
    auto_rate_hz: float = _param(1.0, "rate of automatic segmentation, Hz")
    auto_levels: list[int] = _param([1, 3, 6], "granularity levels of automatic segmentation, 1..6 coarse to fine")
    points_per_side: int = _param(16, "automatic segmentation: point grid size")
    auto_iou_threshold: float = _param(0.88, "automatic segmentation: minimum raw IoU score")
    stability_threshold: float = _param(0.92, "automatic segmentation: minimum stability score")
    nms_iou: float = _param(0.7, "automatic segmentation: box NMS IoU")
    score_threshold: float = _param(
        0.5, "prompted masks: minimum IoU score (rounded to 2 decimals); a prompt none of whose masks reaches it "
             "is answered with no mask")
    dedupe_iou: float = _param(0.95, "prompted masks: drop a mask overlapping a kept one by more than this IoU")
    min_region_area: int = _param(100, "holes and islands smaller than this are removed, pixels")
    buffer_size: int = _param(8, "recent frames kept, with their image embeddings, for stamped prompts")
    max_stamp_diff: float = _param(0.5, "largest gap between a prompt's stamp and the frame it is answered on, s")
    label_image_level: int = _param(3, "the granularity level drawn into ~/label_image")
    overlay_alpha: float = _param(0.5, "opacity of the masks in ~/overlay")
    semantics: bool = _param(False, "label segments with a CLIP model (needs transformers and a local model)")
    clip_model: str = _param("", "'' (the labeller's default), a local folder or a model id in the local HF cache")
    vocabulary: str = _param("", "'' (the shipped vocabulary) or a vocabulary YAML path")
    vocabulary_objects: list[str] = _param(
        [], "object names for levels 1-3, replacing those of the vocabulary file; empty: the file's")
    vocabulary_parts: list[str] = _param(
        [], "part names for levels 4-6, replacing those of the vocabulary file; empty: the file's")
    text_top_k: int = _param(
        1, "masks a prompt's text keeps: per point, among its boxes' masks, or among the automatic masks of a "
           "text-only prompt")
    max_tracks: int = _param(32, "most live tracks (tracking or lost); ~/track refuses more")
    track_lost_after: int = _param(3, "consecutive frames without its mask after which a track is lost")
    track_forget_s: float = _param(5.0, "a lost track is looked for this long after it was last seen, then ends, s")
    track_min_iou: float = _param(
        0.3, "a track takes a mask overlapping its last mask, moved to where it should be, by at least this IoU")
    track_frame: str = _param(
        "", "fixed TF frame (odom, map, a table) of the tracks' 3D anchors, with use_depth: camera motion is then "
            "compensated through TF; '': image motion only")
    error_log_period: float = _param(10.0, "seconds between two log lines of the same error cause")
    autostart: bool = _param(True, "configure and activate on start")

    def validate(self) -> list[str]:
        """Why these values are not usable (empty when they are)."""
        reasons = []

        def need(ok: bool, reason: str) -> None:
            if not ok:
                reasons.append(reason)

        need(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        need(self.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        need(self.input_size >= 32, f"input_size must be >= 32, got {self.input_size}")
        need(self.max_long_side >= self.input_size,
             f"max_long_side must be >= input_size ({self.input_size}), got {self.max_long_side}")
        need(self.max_image_pixels >= 1, f"max_image_pixels must be >= 1, got {self.max_image_pixels}")
        need(self.image_transport in ("raw", "compressed"),
             f"image_transport must be raw or compressed, got {self.image_transport!r}")
        try:
            build_cameras(list(self.cameras), {})  # the names (per-camera values: load_node_params, the node)
        except ValueError as exc:
            reasons.append(str(exc))
        need(self.sync_slop > 0, f"sync_slop must be > 0 s, got {self.sync_slop}")
        need(self.input_reliability in ("best_effort", "reliable"),
             f"input_reliability must be best_effort or reliable, got {self.input_reliability!r}")
        need(self.input_depth >= 1, f"input_depth must be >= 1, got {self.input_depth}")
        need(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        need(self.auto_rate_hz > 0, f"auto_rate_hz must be > 0, got {self.auto_rate_hz}")
        need(len(self.auto_levels) > 0 and len(set(self.auto_levels)) == len(self.auto_levels)
             and set(self.auto_levels) <= set(LEVELS),
             f"auto_levels must be distinct levels among 1..6, got {list(self.auto_levels)}")
        need(self.points_per_side >= 1, f"points_per_side must be >= 1, got {self.points_per_side}")
        for name in ("auto_iou_threshold", "score_threshold"):
            need(np.isfinite(getattr(self, name)), f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("stability_threshold", "nms_iou", "dedupe_iou", "overlay_alpha"):
            need(0.0 <= getattr(self, name) <= 1.0, f"{name} must lie in [0, 1], got {getattr(self, name)}")
        need(self.min_region_area >= 0, f"min_region_area must be >= 0, got {self.min_region_area}")
        need(self.buffer_size >= 1, f"buffer_size must be >= 1, got {self.buffer_size}")
        need(self.max_stamp_diff > 0, f"max_stamp_diff must be > 0 s, got {self.max_stamp_diff}")
        need(self.label_image_level in LEVELS, f"label_image_level must lie in 1..6, got {self.label_image_level}")
        need(self.error_log_period >= 0, f"error_log_period must be >= 0 s, got {self.error_log_period}")
        for name in ("vocabulary_objects", "vocabulary_parts"):
            names = getattr(self, name)
            need(all(isinstance(n, str) and n.strip() for n in names),
                 f"{name} must be a list of non-empty names, got {list(names)}")
        for name in VOCABULARY_PARAMS:
            need(self.semantics or not getattr(self, name),
                 f"{name} needs semantics: true (semantics is off, so there is no vocabulary to change)")
        need(self.text_top_k >= 1, f"text_top_k must be >= 1, got {self.text_top_k}")
        need(self.max_tracks >= 1, f"max_tracks must be >= 1, got {self.max_tracks}")
        need(self.track_lost_after >= 1, f"track_lost_after must be >= 1, got {self.track_lost_after}")
        need(self.track_forget_s >= 0, f"track_forget_s must be >= 0 s, got {self.track_forget_s}")
        need(0 < self.track_min_iou <= 1, f"track_min_iou must lie in (0, 1], got {self.track_min_iou}")
        return reasons

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NodeParams:
        """NodeParams from a name -> value mapping; unknown names are a ValueError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(unknown)}")
        return cls(**values)


RUNTIME_PARAMS = frozenset({
    "mode", "auto_rate_hz", "auto_levels", "points_per_side", "auto_iou_threshold", "stability_threshold",
    "nms_iou", "score_threshold", "dedupe_iou", "min_region_area", "max_stamp_diff", "label_image_level",
    "overlay_alpha", "error_log_period", "vocabulary", "vocabulary_objects", "vocabulary_parts", "text_top_k",
})


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
    """NodeParams from a params file (None: the defaults), then ``overrides``; ValueError with every reason.

    Per-camera parameters (``<camera>.image``...) are checked against ``cameras`` and not part of NodeParams."""
    values = read_params_file(path, node) if path is not None else {}
    values.update(overrides or {})
    camera_values = {k: v for k, v in values.items() if is_camera_key(k)}
    try:
        params = NodeParams.from_dict({k: v for k, v in values.items() if k not in camera_values})
        reasons = params.validate()
        build_cameras(list(params.cameras), camera_values, params.image_transport)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"node parameters: {exc}") from None
    if reasons:
        raise ValueError("node parameters: " + "; ".join(reasons))
    return params
