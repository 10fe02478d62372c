"""Several cameras, one Scheduler: per-camera slots and prompts, one batched encoder call per step."""
from __future__ import annotations

from pathlib import Path

import pytest

from semsam_ros.ros.cameras import CameraParams, build_cameras, camera_parameters
from semsam_ros.ros.convert import stamp_to_ns
from semsam_ros.ros.params import NodeParams, load_node_params
from semsam_ros.ros.scheduler import Scheduler
from test_ros_core import SEC, Clock, FakePipeline, FakePredictor, frame, point_prompt, types  # noqa: F401


def make_multicam(types, names, logs, predictor=None, **params):
    cameras = build_cameras(names, {f"{n}.max_rate_hz": 0.0 for n in names})
    return Scheduler(NodeParams(cameras=names, **params), predictor or FakePredictor(), types, FakePipeline(),
                     log=logs.append, clock=Clock(), cameras=cameras)


@pytest.mark.parametrize("names", [["head", "wrist"], ["head", "wrist", "base"]])
def test_every_camera_is_answered_on_its_newest_frame_in_one_encoder_call(types, names):
    """Camera k sends a frame every k + 1 ticks, two frames per tick for the first one (the older is never used);
    each has a sticky prompt. Every step encodes the newest frame of each camera that sent one, in one call."""
    logs: list[str] = []
    predictor = FakePredictor()
    core = make_multicam(types, names, logs, predictor)
    for k, name in enumerate(names):
        core.submit_prompt(point_prompt(prompt_id=10 + k, sticky=True, levels=(1,), camera=name))
    assert core.step() == [] and core.counters["prompts_rejected"] == len(names)  # no frame yet
    for tick in range(1, 7):
        sent = {}
        for k, name in enumerate(names):
            if tick % (k + 1):
                continue
            repeats = 2 if k == 0 else 1
            for r in range(repeats):
                stamp = tick * SEC + r * SEC // 10 + k
                core.submit_frame(frame(types, stamp, value=10 * k + r, frame_id=f"{name}_optical"), camera=name)
            sent[name] = (stamp, 10 * k + r)
        batches = len(predictor.batches)
        outputs = core.step()
        assert predictor.batches[batches:] == [len(sent)]  # one encoder call for all cameras with a new frame
        assert sorted(o.frame.camera for o in outputs) == sorted(sent)
        for out in outputs:
            k = names.index(out.frame.camera)
            stamp, value = sent[out.frame.camera]
            assert stamp_to_ns(out.message.header.stamp) == stamp and out.frame.rgb[0, 0, 0] == value
            assert out.message.header.frame_id == f"{out.frame.camera}_optical"
            assert {s.prompt_id for s in out.segments} == {10 + k}  # never another camera's prompt
    assert core.counters["frames_dropped"] == 6  # the first camera's older frame of each tick


def test_prompts_go_to_the_camera_they_name(types):
    logs: list[str] = []
    core = make_multicam(types, ["head", "wrist"], logs)
    core.submit_frame(frame(types, SEC, frame_id="head_optical"), camera="head")
    core.submit_frame(frame(types, SEC, frame_id="wrist_optical"), camera="wrist")
    core.submit_prompt(point_prompt(prompt_id=1, levels=(1,)))  # no camera: the first one
    core.submit_prompt(point_prompt(prompt_id=2, levels=(1,), camera="wrist"))
    core.submit_prompt(point_prompt(prompt_id=3, levels=(1,), camera="base"))
    outputs = {o.frame.camera: o for o in core.step()}
    assert {c: [s.prompt_id for s in o.segments] for c, o in outputs.items()} == {"head": [1], "wrist": [2]}
    assert core.errors.counts == {"prompt/PromptError/camera": 1} and "no camera 'base'" in logs[0]
    future = core.request(point_prompt(prompt_id=4, levels=(1,), camera="wrist"))
    core.step()
    assert future.result().header.frame_id == "wrist_optical"


def test_tracks_follow_the_first_camera(types):
    logs: list[str] = []
    core = make_multicam(types, ["head", "wrist"], logs)
    core.submit_prompt(point_prompt(prompt_id=5, levels=(2,), camera="wrist", track=True))
    assert core.tracker.tracks == {} and core.errors.counts == {"prompt/PromptError/track": 1}
    assert "tracks follow the first camera ('head')" in logs[0]
    core.submit_prompt(point_prompt(prompt_id=6, levels=(2,), track=True))
    core.submit_frame(frame(types, SEC, frame_id="wrist_optical"), camera="wrist")
    core.submit_frame(frame(types, SEC, frame_id="head_optical"), camera="head")
    (out,) = core.step()  # only the head frame has work: the track
    assert out.frame.camera == "head" and [s.track_id for s in out.segments] == [0]


def test_rate_cap_skips_frames_of_that_camera_only(types):
    cameras = [CameraParams("head", max_rate_hz=2.0), CameraParams("wrist", "w/image")]
    core = Scheduler(NodeParams(cameras=["head", "wrist"]), FakePredictor(), types, FakePipeline(), log=print,
                     clock=Clock(), cameras=cameras)
    for t in (0.0, 0.2, 0.5, 0.6, 1.1):
        core.submit_frame(frame(types, int(t * SEC)), camera="head")
        core.submit_frame(frame(types, int(t * SEC)), camera="wrist")
    assert core.counters["frames_received"] == 10 and core.counters["frames_skipped"] == 2  # head at 0.2 and 0.6
    assert core.stats()["buffered_frames"] == 8


def test_single_camera_keeps_todays_names_and_cameras_read_their_parameters():
    (single,) = build_cameras([], {})
    assert (single.image_topic, single.camera_info, single.depth, single.output("segments")) == (
        "image", "camera_info", "depth", "~/segments")
    head, wrist = build_cameras(["head", "wrist"], {"wrist.image": "/arm/color", "wrist.image_transport":
                                                    "compressed", "wrist.max_rate_hz": 5.0})
    assert (head.image_topic, head.depth, head.output("overlay")) == ("head/image", "head/depth", "~/head/overlay")
    assert (wrist.image_topic, wrist.camera_info, wrist.max_rate_hz) == (
        "/arm/color/compressed", "wrist/camera_info", 5.0)
    with pytest.raises(ValueError, match="wrist.image_transport must be raw or compressed"):
        build_cameras(["wrist"], {"wrist.image_transport": "theora"})
    with pytest.raises(ValueError, match="cameras not in the cameras list: base.image"):
        load_node_params(overrides={"cameras": ["head"], "base.image": "/x"})


def test_launch_camera_parameters_come_from_the_cameras_file(tmp_path):
    root = Path(__file__).resolve().parents[1]
    values = camera_parameters(["head", "wrist"], root / "config/cameras.yaml")
    assert values["cameras"] == ["head", "wrist"] and values["wrist.image_transport"] == "compressed"
    params = load_node_params(overrides=values)
    assert params.cameras == ["head", "wrist"]
    (tmp_path / "cams.yaml").write_text("head: {image: /h, fps: 3}\n")
    with pytest.raises(ValueError, match="unknown camera field.*head.fps"):
        camera_parameters(["head"], tmp_path / "cams.yaml")
    with pytest.raises(ValueError, match="no entry for camera.*wrist"):
        camera_parameters(["wrist"], tmp_path / "cams.yaml")
