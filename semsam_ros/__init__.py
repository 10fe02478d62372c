"""semsam_ros: Semantic-SAM (segment and recognise anything at any granularity) for ROS 2.

The package imports without ROS; only ``semsam_ros.ros.node`` needs rclpy.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "semsam_ros.checkpoint",
    "ModelConfig": "semsam_ros.config",
    "Predictor": "semsam_ros.inference.predictor",
    "Prediction": "semsam_ros.inference.predictor",
    "AutomaticMaskGenerator": "semsam_ros.inference.amg",
    "Segment": "semsam_ros.types",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the public API on first use, so ``import semsam_ros`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'semsam_ros' has no attribute {name!r}")
