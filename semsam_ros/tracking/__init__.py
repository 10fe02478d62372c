"""Tracked objects and parts with stable ids across frames, by re-prompting (ROS-free, numpy)."""
from semsam_ros.tracking.motion import MotionEstimator
from semsam_ros.tracking.track import Origin, Track, TrackPrompt
from semsam_ros.tracking.tracker import Tracker, decode

__all__ = ["MotionEstimator", "Origin", "Track", "TrackPrompt", "Tracker", "decode"]
