"""One way to build ROS messages, whether the classes come from rclpy or from a rosbags typestore.

Conversion code (images, segments, clouds, markers) takes a ``MessageTypes`` and calls ``make`` with every field,
so the same function serves the live node and offline bag processing.
"""
from __future__ import annotations

import array
import importlib
from typing import Any, Callable

import numpy as np


class MessageTypes:
    """Resolves ``'pkg/msg/Name'`` to a message class and builds instances of it."""

    def __init__(self, resolve: Callable[[str], type], flavor: str) -> None:
        if flavor not in ("rosbags", "rclpy"):
            raise ValueError(f"unknown message flavor {flavor!r}")
        self._resolve = resolve
        self.flavor = flavor

    @classmethod
    def from_typestore(cls, typestore: Any) -> "MessageTypes":
        """Message classes of a rosbags typestore (our own types must be registered in it)."""
        return cls(lambda name: typestore.types[name], "rosbags")

    @classmethod
    def from_rclpy(cls) -> "MessageTypes":
        """Message classes of the installed ROS 2 Python packages (``sensor_msgs.msg.Image``...)."""

        def resolve(name: str) -> type:
            pkg, sub, cls_name = name.split("/")
            return getattr(importlib.import_module(f"{pkg}.{sub}"), cls_name)

        return cls(resolve, "rclpy")

    def get(self, name: str) -> type:
        return self._resolve(name)

    def make(self, name: str, /, **fields: Any) -> Any:
        """Instance of message ``name``; pass every field (rosbags classes have no defaults).

        ``name`` is positional-only, so a message may have a field called ``name`` (sensor_msgs/PointField).
        """
        return self._resolve(name)(**fields)

    def byte_array(self, data: np.ndarray | bytes) -> Any:
        """A ``uint8[]`` field value (one copy of ``data``'s bytes): numpy for rosbags, ``array.array('B')`` for
        rclpy."""
        flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else data
        if self.flavor == "rosbags":
            return np.frombuffer(flat, dtype=np.uint8).copy()
        out = array.array("B")
        out.frombytes(flat)
        return out

    def float_array(self, values: Any, dtype: str = "float64") -> Any:
        """A ``float64[]``/``float32[]`` field value (numpy for rosbags, list for rclpy)."""
        arr = np.asarray(values, dtype=dtype).ravel()
        return arr if self.flavor == "rosbags" else arr.tolist()
