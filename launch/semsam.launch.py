"""Start the semsam lifecycle node (and optionally RViz) for one camera, or for several with one model.

    ros2 launch semsam_ros semsam.launch.py checkpoint:=/path/swint_only_sam_many2many.pth \
        image:=/camera/color/image_raw camera_info:=/camera/color/camera_info use_rviz:=true
    ros2 launch semsam_ros semsam.launch.py checkpoint:=... cameras:=head,wrist cameras_file:=/path/cameras.yaml

With ``cameras`` each camera's topics come from ``cameras_file`` (default: the package's config/cameras.yaml) and
``image``, ``camera_info`` and ``depth`` are not used.

Empty arguments keep the value of ``params_file`` (default: the package's config/semsam.yaml).
"""
from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from semsam_ros.ros.cameras import camera_parameters

SHARE = get_package_share_directory("semsam_ros")

# Node parameters settable from the command line: name -> (type, description). Empty: keep params_file's value.
OVERRIDES = {
    "checkpoint": (str, "model weights (.pth official or .safetensors)"),
    "model_config": (str, "swint, swinl or an official-format YAML (empty: inferred)"),
    "device": (str, "auto, cpu, cuda or cuda:N"),
    "backend": (str, "eager, compile or tensorrt"),
    "precision": (str, "fp32, fp16 or bf16"),
    "mode": (str, "prompts, auto or both"),
    "image_transport": (str, "raw (sensor_msgs/Image) or compressed (<image>/compressed)"),
    "use_depth": (bool, "subscribe depth and camera_info, synchronised, for 3D outputs"),
    "semantics": (bool, "label segments and answer text prompts with a CLIP model (needs transformers)"),
    "clip_model": (str, "local CLIP folder or model id in the local HF cache (empty: the default model)"),
    "autostart": (bool, "configure and activate on start"),
}
ARGUMENTS = {
    "namespace": ("", "namespace of the node"),
    "image": ("/camera/color/image_raw", "camera image topic (for compressed transport: its base topic)"),
    "camera_info": ("/camera/color/camera_info", "camera_info topic of that image"),
    "depth": ("/camera/aligned_depth_to_color/image_raw", "depth registered to the image (with use_depth)"),
    "cameras": ("", "comma-separated camera names served by one node (empty: the one camera above)"),
    "cameras_file": (os.path.join(SHARE, "config", "cameras.yaml"), "per-camera topics, transport and rate cap"),
    "params_file": (os.path.join(SHARE, "config", "semsam.yaml"), "node parameters YAML"),
    "use_rviz": ("false", "also start RViz with the package's configuration"),
    "rviz_config": (os.path.join(SHARE, "config", "semsam.rviz"), "RViz configuration"),
    "fixed_frame": ("", "RViz fixed frame (empty: the one in rviz_config)"),
    "log_level": ("info", "log level of the node"),
}


def _typed(name: str, value: str, kind: type) -> object:
    if kind is bool:
        if value.lower() not in ("true", "false"):
            raise ValueError(f"launch argument {name} must be true or false, got {value!r}")
        return value.lower() == "true"
    return kind(value)


def _setup(context: LaunchContext) -> list[Node]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    overrides = {name: _typed(name, arg(name), kind) for name, (kind, _) in OVERRIDES.items() if arg(name) != ""}
    cameras = [name.strip() for name in arg("cameras").split(",") if name.strip()]
    if cameras:
        overrides.update(camera_parameters(cameras, arg("cameras_file")))
    image = arg("image")
    actions = [
        Node(
            package="semsam_ros",
            executable="semsam_node",
            name="semsam",
            namespace=arg("namespace"),
            output="screen",
            parameters=[arg("params_file"), overrides],
            remappings=[
                ("image", image),
                ("image/compressed", f"{image}/compressed"),
                ("camera_info", arg("camera_info")),
                ("depth", arg("depth")),
            ],
            arguments=["--ros-args", "--log-level", arg("log_level")],
        )
    ]
    if _typed("use_rviz", arg("use_rviz"), bool):
        fixed_frame = ["-f", arg("fixed_frame")] if arg("fixed_frame") else []
        actions.append(Node(package="rviz2", executable="rviz2", arguments=["-d", arg("rviz_config"), *fixed_frame],
                            output="screen"))
    return actions


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(name, default_value="", description=doc) for name, (_, doc) in OVERRIDES.items()]
    declared += [DeclareLaunchArgument(name, default_value=default, description=doc)
                 for name, (default, doc) in ARGUMENTS.items()]
    return LaunchDescription([*declared, OpaqueFunction(function=_setup)])
