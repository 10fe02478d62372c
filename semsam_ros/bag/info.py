"""``bag_info``: what a rosbag2 holds, with rates and first-frame formats of its image topics."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from semsam_ros.bag.reader import COMPRESSED_IMAGE, IMAGE_TYPES, open_bag, read_messages, storage_of


def bag_info(path: str | Path) -> dict[str, Any]:
    """Storage, time span, and per topic its type and count; image topics also their rate (Hz, from the bag times)
    and the encoding (or format) and size of their first frame."""
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    with open_bag(path) as reader:
        typestore = get_typestore(Stores.ROS2_HUMBLE)
        topics = reader.topics
        images = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        times: dict[str, list[int]] = {t: [] for t in topics if topics[t].msgtype in IMAGE_TYPES}
        first: dict[str, dict[str, Any]] = {}
        for conn, time_ns, raw in read_messages(reader, path, images):
            times[conn.topic].append(time_ns)
            if conn.topic not in first:
                try:
                    msg = typestore.deserialize_cdr(raw, conn.msgtype)
                except Exception as exc:  # noqa: BLE001  (reported, not fatal: this is a summary)
                    first[conn.topic] = {"error": f"cannot deserialise: {exc}"}
                    continue
                first[conn.topic] = ({"format": msg.format} if conn.msgtype == COMPRESSED_IMAGE else
                                     {"encoding": msg.encoding, "width": int(msg.width), "height": int(msg.height)})
        entries = []
        for topic, info in sorted(topics.items()):
            entry: dict[str, Any] = {"topic": topic, "type": info.msgtype, "count": info.msgcount}
            if topic in times:
                stamps = times[topic]
                span = (stamps[-1] - stamps[0]) / 1e9 if len(stamps) > 1 else 0.0
                entry["rate_hz"] = round((len(stamps) - 1) / span, 3) if span > 0 else None
                entry.update(first.get(topic, {}))
            entries.append(entry)
        count = reader.message_count
        return {
            "path": str(path), "storage": storage_of(path), "ros_distro": reader.ros_distro, "messages": count,
            "start_ns": reader.start_time if count else None, "end_ns": reader.end_time if count else None,
            "duration_s": reader.duration / 1e9, "topics": entries,
        }

