"""The ROS 2 package around the Python code: installed commands, documented names, the source tree beside a build."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIFECYCLE_SERVICES = {"change_state", "get_state", "get_available_states", "get_available_transitions",
                      "get_transition_graph"}


def node_names() -> set[str]:
    """The private names (``~/x``) the node subscribes, publishes and serves."""
    code = (ROOT / "semsam_ros/ros/node.py").read_text()
    outputs = re.search(r"\boutputs = \{([^}]*)\}", code).group(1)  # created as f"~/{name}"
    return set(re.findall(r'"~/(\w+)"', code)) | set(re.findall(r'"(\w+)":', outputs))


def test_every_documented_node_name_exists():
    names = node_names()
    assert {"prompt", "segments", "segment", "set_vocabulary", "clear_prompts"} <= names
    for doc in ("README.md", "docs/ros.md", "docs/bag.md"):
        used = set(re.findall(r"/semsam/(\w+)", (ROOT / doc).read_text()))
        assert used - names - LIFECYCLE_SERVICES == set(), doc


def test_the_names_table_lists_every_node_name():
    text = (ROOT / "docs/ros.md").read_text()
    for name in node_names():
        assert f"| `~/{name}` | `/semsam/{name}` | `/robot1/semsam/{name}` |" in text, name


def test_semsam_command_is_installed_with_the_ros_package():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"install\(PROGRAMS scripts/semsam DESTINATION bin\)", cmake)
    assert re.search(r"install\(PROGRAMS [^)]*scripts/semsam_node[^)]*DESTINATION lib/\$\{PROJECT_NAME\}\)", cmake)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "scripts/semsam"), "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and "download" in done.stdout, done.stderr


def test_the_source_tree_finds_the_built_interfaces(tmp_path):
    """``python3 -m pytest`` in the checkout puts the source package first; the generated ``semsam_ros.msg`` of the
    colcon install (later on sys.path) must still import."""
    built = tmp_path / "install" / "semsam_ros"
    (built / "msg").mkdir(parents=True)
    (built / "__init__.py").write_text("")
    (built / "msg" / "__init__.py").write_text("SegmentArray = 'generated'\n")
    code = ("import semsam_ros, semsam_ros.msg, semsam_ros.types; "
            "print(semsam_ros.msg.SegmentArray, semsam_ros.types.__file__)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path / "install")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    generated, types_file = done.stdout.split()
    assert generated == "generated" and Path(types_file).is_relative_to(ROOT / "semsam_ros")
