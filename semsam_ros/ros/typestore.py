"""rosbags typestores with the semsam_ros interfaces registered from our own ``msg/`` and ``srv/`` files.

The ``.msg``/``.srv`` files are the one source of truth: they are parsed at run time from the source checkout
(editable installs, tests), from the colcon install (``share/semsam_ros`` found through the ament index), or from
``share/semsam_ros`` of a pip install. rosbags has no service types, so a service ``Foo`` is registered as the two
messages ``semsam_ros/srv/Foo_Request`` and ``semsam_ros/srv/Foo_Response`` (the names ROS 2 gives them).
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from semsam_ros.io.resources import PACKAGE, find_data_file
from semsam_ros.ros.msgtypes import MessageTypes

STORES = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}
_SRV_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)


def find_interface_dir() -> Path:
    """The directory whose ``msg/`` holds our message definitions; FileNotFoundError naming the places tried."""
    return find_data_file("msg/SegmentArray.msg").parents[1]


@lru_cache(maxsize=None)
def interface_types(root: Path | None = None) -> dict[str, Any]:
    """rosbags type definitions of every ``msg/*.msg`` and ``srv/*.srv`` below ``root`` (default: found)."""
    root = find_interface_dir() if root is None else Path(root)
    types: dict[str, Any] = {}
    for path in sorted((root / "msg").glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"{PACKAGE}/msg/{path.stem}"))
    for path in sorted((root / "srv").glob("*.srv")):
        parts = _SRV_SEPARATOR.split(path.read_text(encoding="utf-8"))
        if len(parts) != 2:
            raise ValueError(f"{path}: a service needs exactly one '---' line between request and response")
        for text, suffix in zip(parts, ("Request", "Response")):
            # Parsed as a message of our package so bare type names resolve to semsam_ros/msg/..., then renamed.
            (definition,) = get_types_from_msg(text, f"{PACKAGE}/msg/{path.stem}_{suffix}").values()
            types[f"{PACKAGE}/srv/{path.stem}_{suffix}"] = definition
    return types


def make_typestore(distro: str = "humble") -> Typestore:
    """A new rosbags typestore of ROS 2 ``distro`` ('humble' or 'jazzy') with our interfaces registered."""
    if distro not in STORES:
        raise ValueError(f"unknown ROS 2 distro {distro!r}; expected one of {sorted(STORES)}")
    store = get_typestore(STORES[distro])
    store.register(interface_types())
    return store


def message_types(distro: str = "humble") -> MessageTypes:
    """``MessageTypes`` over a fresh typestore of ``distro`` with our interfaces registered."""
    return MessageTypes.from_typestore(make_typestore(distro))
