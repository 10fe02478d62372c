"""Depth -> 3D per mask (the object's oriented box, centroid, normal, long axis, grasp point), point clouds,
3D point -> pixel. ROS-free."""
from semsam_ros.geometry.camera import CameraModel, project_point
from semsam_ros.geometry.cloud import CLOUD_DTYPE, pack_rgb, segments_cloud
from semsam_ros.geometry.depth import DEFAULT_MAX_DEPTH_M, DEFAULT_MIN_DEPTH_M, depth_to_meters
from semsam_ros.geometry.mask3d import Mask3D, mask_to_3d, segments_to_3d, transform

__all__ = [
    "CLOUD_DTYPE",
    "DEFAULT_MAX_DEPTH_M",
    "DEFAULT_MIN_DEPTH_M",
    "CameraModel",
    "Mask3D",
    "depth_to_meters",
    "mask_to_3d",
    "pack_rgb",
    "project_point",
    "segments_cloud",
    "segments_to_3d",
    "transform",
]
