"""sensor_msgs/PointCloud2 of segments, for rclpy and rosbags message classes alike."""
from __future__ import annotations

from typing import Any

import numpy as np

from semsam_ros.geometry.cloud import CLOUD_DTYPE, CLOUD_FIELDS
from semsam_ros.ros.msgtypes import MessageTypes


def cloud_message(types: MessageTypes, header: Any, cloud: np.ndarray) -> Any:
    """An unorganised (height 1) PointCloud2 of a ``segments_cloud`` array; ``header`` names its frame."""
    if cloud.dtype != CLOUD_DTYPE:
        raise ValueError(f"cloud must have dtype CLOUD_DTYPE (see semsam_ros.geometry.cloud), got {cloud.dtype}")
    point_field = types.get("sensor_msgs/msg/PointField")  # not types.make: its own argument is called name
    fields = [point_field(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in CLOUD_FIELDS]
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
