"""Offline rosbag2 processing with ``rosbags`` (no ROS needed): what the node does, on recorded camera frames.

``plan_bag`` checks everything that needs no model (options, paths, the bag, its topics, the output names);
``process_bag`` reads a rosbag2 (sqlite3 or mcap), copies every message into a new bag and adds, for each
processed frame of the chosen image topics, a semsam_ros/SegmentArray, an overlay image and, with depth, the 3D
outputs. Every added message carries the frame's header exactly and is written at the frame's bag time. Frames go
through the node's ``FrameProcessor`` and ``ModelPipeline``, and their messages come from ``ros.outputs``. Prompts
come from a YAML file, from a recorded Prompt topic (answered on the frame nearest their stamp, sticky ones on the
later frames too), or from automatic mode. See docs/bag.md.

rosbags, PIL and scipy are imported when a bag is read. This package never imports the command line.
"""
from semsam_ros.bag.info import bag_info
from semsam_ros.bag.options import BagOptions, BagSummary, BagTime
from semsam_ros.bag.plan import BagPlan, check_paths, plan_bag
from semsam_ros.bag.process import process_bag
from semsam_ros.bag.prompts import default_camera_info_topic, load_prompts, output_topics, parse_topic_map
from semsam_ros.bag.reader import STORAGES, BagError

__all__ = [
    "STORAGES", "BagError", "BagOptions", "BagPlan", "BagSummary", "BagTime", "bag_info", "check_paths",
    "default_camera_info_topic", "load_prompts", "output_topics", "parse_topic_map", "plan_bag",
    "process_bag",
]
