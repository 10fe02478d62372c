"""semsam_ros: Semantic-SAM (segment and recognise anything at any granularity) for ROS 2.

The package imports without ROS; only ``semsam_ros.ros.node`` needs rclpy.
"""
from __future__ import annotations

from pkgutil import extend_path
from typing import Any

# The ROS 2 build installs the generated interfaces (semsam_ros.msg, semsam_ros.srv) beside these modules. When this
# source tree comes first on sys.path (python3 -m pytest in the checkout), they are found in the installed copy.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"

_LAZY = {
    "load_model": "semsam_ros.io.checkpoint",
    "ModelConfig": "semsam_ros.config",
    "Predictor": "semsam_ros.inference.predictor",
    "Prediction": "semsam_ros.inference.predictor",
    "AutomaticMaskGenerator": "semsam_ros.inference.amg",
    "Segment": "semsam_ros.types",
    "Tracker": "semsam_ros.tracking",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the public API on first use, so ``import semsam_ros`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'semsam_ros' has no attribute {name!r}")
