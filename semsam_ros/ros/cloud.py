"""sensor_msgs/PointCloud2 of segments, for rclpy and rosbags message classes alike."""
from __future__ import annotations

from typing import Any

import numpy as np

from semsam_ros.geometry.cloud import CLOUD_DTYPE
from semsam_ros.ros.msgtypes import MessageTypes


POINT_FIELD_TYPES = {np.dtype("u1"): 2, np.dtype("<u4"): 6, np.dtype("<f4"): 7}  # sensor_msgs/PointField codes


def point_fields(dtype: np.dtype = CLOUD_DTYPE) -> list[tuple[str, int, int, int]]:
    """(name, offset, PointField datatype, count) of every field of a structured point dtype."""
    return [(name, offset, POINT_FIELD_TYPES[field], 1) for name, (field, offset) in dtype.fields.items()]


def cloud_message(types: MessageTypes, header: Any, cloud: np.ndarray) -> Any:
    """An unorganised (height 1) PointCloud2 of a ``segments_cloud`` array; ``header`` names its frame."""
    if cloud.dtype != CLOUD_DTYPE:
        raise ValueError(f"cloud must have dtype CLOUD_DTYPE (see semsam_ros.geometry.cloud), got {cloud.dtype}")
    point_field = types.get("sensor_msgs/msg/PointField")  # not types.make: its own argument is called name
    fields = [point_field(name=name, offset=offset, datatype=datatype, count=count)
              for name, offset, datatype, count in point_fields()]
    return types.make(
        "sensor_msgs/msg/PointCloud2",
        header=header,
        height=1,
        width=int(cloud.size),
        fields=fields,
        is_bigendian=False,
        point_step=CLOUD_DTYPE.itemsize,
        row_step=CLOUD_DTYPE.itemsize * int(cloud.size),
        data=types.byte_array(np.ascontiguousarray(cloud)),
        is_dense=True,
    )
