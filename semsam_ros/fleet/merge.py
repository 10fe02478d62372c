"""The bags of a recording's time slices, merged in order into the one bag ``semsam bag`` writes for the whole."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from semsam_ros.bag.process import BAG_VERSION
from semsam_ros.bag.reader import BagError, open_bag, read_messages, storage_of


def merge_bags(parts: list[Path], dst: Path, model_id: str) -> int:
    """Write every message of ``parts`` (bags of consecutive, disjoint windows of one input, written by
    ``process_bag`` with the same options, so with the same connections in the same order) into the new bag
    ``dst``, part after part; returns the number of messages."""
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.rosbag2 import StoragePlugin, Writer

    if not parts:
        raise BagError("nothing to merge")
    storage = storage_of(parts[0])
    writer = Writer(dst, version=BAG_VERSION, storage_plugin=StoragePlugin[storage.upper()])
    writer.open()
    writer.set_custom_data("semsam_ros.model_id", model_id)
    count = 0
    try:
        outputs: dict[tuple[str, str], Any] = {}
        for part in parts:
            with open_bag(part) as reader:
                for conn in reader.connections:
                    key = (conn.topic, conn.msgtype)
                    if key not in outputs:
                        msgdef = conn.msgdef.data if conn.msgdef.format != MessageDefinitionFormat.NONE else None
                        outputs[key] = writer.add_connection(
                            conn.topic, conn.msgtype, msgdef=msgdef, rihs01=conn.digest or None,
                            serialization_format=conn.ext.serialization_format,
                            offered_qos_profiles=conn.ext.offered_qos_profiles)
                for conn, time_ns, raw in read_messages(reader, part):
                    writer.write(outputs[(conn.topic, conn.msgtype)], time_ns, raw)
                    count += 1
    finally:
        writer.close()
    return count
