"""ROS 2 parameter files read without ROS: node keys, wildcards, overrides, and the shipped config/semsam.yaml."""
from __future__ import annotations

from pathlib import Path

import pytest

from semsam_ros.ros.params import NodeParams
from semsam_ros.ros.params import load_node_params, read_params_file

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_file_holds_the_defaults():
    assert load_node_params(REPO / "config" / "semsam.yaml") == NodeParams()


def test_matching_blocks_apply_in_file_order(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("""
/**:
  ros__parameters: {score_threshold: 0.6, points_per_side: 4}
other_node:
  ros__parameters: {score_threshold: 0.1}
/**/semsam:
  ros__parameters: {points_per_side: 8}
semsam:
  ros__parameters: {dedupe_iou: 0.9}
""")
    assert read_params_file(path) == {"score_threshold": 0.6, "points_per_side": 8, "dedupe_iou": 0.9}
    assert read_params_file(path, node="/other_node") == {"score_threshold": 0.1, "points_per_side": 4}
    params = load_node_params(path, {"points_per_side": 2, "auto_levels": [2]})
    assert (params.score_threshold, params.points_per_side, params.dedupe_iou, params.auto_levels) == (0.6, 2, 0.9, [2])


def test_flat_mapping_and_errors(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("nms_iou: 0.5\n")
    assert load_node_params(path).nms_iou == 0.5
    for text, message in [("nms_iou: 3\n", "node parameters: nms_iou must lie in"),
                          ("colour: red\n", "unknown parameter"), ("- 1\n", "expected a mapping"),
                          ("a: [\n", "cannot read parameter file")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_node_params(path)
    with pytest.raises(ValueError, match="cannot read parameter file"):
        load_node_params(tmp_path / "missing.yaml")
