"""Reading rosbag2 files with ``rosbags``: storage, open, messages (corruption as one-line BagErrors), stamps."""
from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from semsam_ros.text import one_line

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
PROMPT = "semsam_ros/msg/Prompt"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
STORAGES = ("sqlite3", "mcap")


class BagError(Exception):
    """A bag that cannot be processed as asked: missing or corrupt input, existing output, unknown topic..."""


def storage_of(path: Path) -> str:
    """sqlite3 or mcap: the storage of a bag directory or of a single .db3/.mcap file."""
    if path.is_file():
        return "mcap" if path.suffix == ".mcap" else "sqlite3"
    return "mcap" if any(path.glob("*.mcap*")) else "sqlite3"


@contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """An open rosbags Reader; BagError with the reason when the bag is missing, unreadable or corrupt."""
    try:
        from rosbags.rosbag2 import Reader
    except ImportError:
        raise BagError("the bag tools need rosbags: pip install 'semsam_ros[bag]'") from None
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:  # noqa: BLE001  (rosbags, apsw and the OS raise many kinds; all mean "unreadable")
        raise BagError(f"cannot read bag {path}: {one_line(str(exc)) or type(exc).__name__}") from None
    try:
        yield reader
    finally:
        reader.close()


def read_messages(reader: Any, path: Path, connections: Sequence[Any] = (), start: int | None = None,
                  stop: int | None = None) -> Iterator[tuple[Any, int, bytes]]:
    """``reader.messages`` with a read failure (corrupt or truncated storage) turned into a one-line BagError."""
    messages = reader.messages(connections, start, stop)
    count = 0
    while True:
        try:
            item = next(messages)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001  (anything the reader raises means the storage is damaged)
            raise BagError(f"bag {path} is corrupt or truncated (failed after {count} message(s)): "
                           f"{one_line(str(exc)) or type(exc).__name__}") from None
        count += 1
        yield item


def header_stamp(raw: bytes | memoryview) -> int | None:
    """Stamp (ns) of a CDR message whose first field is a std_msgs/Header, without deserialising; None if short."""
    try:
        sec, nanosec = struct.unpack_from("<iI" if raw[1] & 1 else ">iI", raw, 4)
    except (struct.error, IndexError):
        return None
    return sec * 1_000_000_000 + nanosec


def nearest(stamps: np.ndarray, stamp: int, max_gap_ns: int | None) -> int | None:
    """Index of the stamp nearest ``stamp`` (the first of equals), if within ``max_gap_ns``."""
    if stamps.size == 0:
        return None
    gaps = np.abs(stamps - stamp)
    best = int(np.argmin(gaps))
    return best if max_gap_ns is None or gaps[best] <= max_gap_ns else None

