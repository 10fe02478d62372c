"""``semsam bag`` on a bag with two cameras, or a camera's raw and compressed topics: results equal each alone."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rosbags")

from semsam_ros.bag import BagError, BagOptions, plan_bag, process_bag  # noqa: E402
from semsam_ros.ros.convert import PromptRequest, msg_to_segments, prompt_to_msg, stamp_to_ns  # noqa: E402
from test_bag import (  # noqa: E402
    COMPRESSED, IMAGE, PARAMS, SEC, T0, TYPES, compressed, raw_image, read_bag, scene, write_bag,
)
from test_bag import one_torch_thread, predictor  # noqa: E402,F401  (fixtures)
from semsam_ros.ros.convert import make_header  # noqa: E402

HEAD, WRIST = "/head/image", "/wrist/image"


def camera_messages(topic: str, period: int, offset: int, flip: bool) -> list:
    """Frames every ``period`` tenths of a second, each stamped with the camera's own stamp and frame."""
    out = []
    for k in range(0, 8, period):
        stamp = T0 + k * SEC // 10 + offset
        rgb = scene(k)[::-1].copy() if flip else scene(k)
        out.append((topic, IMAGE, stamp, raw_image(make_header(TYPES, stamp, f"{topic[1:5]}_optical"), "rgb8", rgb)))
    return out


def sticky_prompt(topic: str, prompt_id: int, point: tuple[int, int]) -> tuple:
    """Logged just after the camera's first frame: answered on it (stamp zero) and on every later frame."""
    request = PromptRequest(prompt_id, np.array([point], np.float64), levels=(1, 3), sticky=True)
    return (f"{topic}/prompt", "semsam_ros/msg/Prompt", T0 + 50, prompt_to_msg(TYPES, request))


def test_two_camera_bag_equals_each_camera_alone(tmp_path, predictor):
    head, wrist = camera_messages(HEAD, 1, 11, False), camera_messages(WRIST, 2, 22, True)
    prompts = [sticky_prompt(HEAD, 1, (30, 20)), sticky_prompt(WRIST, 2, (60, 50))]
    bag = write_bag(tmp_path / "both", "sqlite3", sorted(prompts + head + wrist, key=lambda m: m[2]))
    topics = {HEAD: f"{HEAD}/prompt", WRIST: f"{WRIST}/prompt"}
    sizes: list[int] = []
    encode_batch = predictor.encode_batch
    predictor.encode_batch = lambda images: sizes.append(len(images)) or encode_batch(images)
    try:
        process_bag(bag, tmp_path / "out", predictor, BagOptions([HEAD, WRIST], prompt_topics=topics, params=PARAMS))
    finally:
        del predictor.encode_batch
    assert 2 in sizes and sum(sizes) == len(head) + len(wrist)  # the cameras were encoded together
    both = read_bag(tmp_path / "out")
    for topic, messages, pid in ((HEAD, head, 1), (WRIST, wrist, 2)):
        process_bag(bag, tmp_path / topic[1:5], predictor,
                    BagOptions([topic], prompt_topics={topic: topics[topic]}, params=PARAMS))
        alone = read_bag(tmp_path / topic[1:5])[f"{topic}/segments"]
        together = both[f"{topic}/segments"]
        assert [stamp_to_ns(m.header.stamp) for _, m, _ in together] == [m[2] for m in messages]
        assert {m.header.frame_id for _, m, _ in together} == {f"{topic[1:5]}_optical"}
        assert len(together) == len(alone)
        for (_, got, _), (_, ref, _) in zip(together, alone):
            got_segments, ref_segments = msg_to_segments(got), msg_to_segments(ref)
            assert {s.prompt_id for s in got_segments} == {pid} and len(got_segments) == len(ref_segments)
            for seg, other in zip(got_segments, ref_segments):
                assert np.array_equal(seg.mask, other.mask) and seg.level == other.level
                assert seg.iou_score == pytest.approx(other.iou_score, abs=1e-5)


def test_raw_and_compressed_topics_of_one_camera_in_one_run(tmp_path, predictor):
    raw, packed = "/cam/image", "/cam/image/compressed"
    messages = []
    for k in range(3):
        stamp = T0 + k * SEC // 10
        messages.append((raw, IMAGE, stamp + 1, raw_image(make_header(TYPES, stamp, "cam"), "rgb8", scene(k))))
        messages.append((packed, COMPRESSED, stamp + 2, compressed(k, "png")))
    bag = write_bag(tmp_path / "in", "sqlite3", messages)
    prompts = {t: [PromptRequest(3, np.array([[30.0, 22.0]]), levels=(1, 3))] for t in (raw, packed)}
    process_bag(bag, tmp_path / "both", predictor, BagOptions([raw, packed], prompts=prompts, params=PARAMS))
    both = read_bag(tmp_path / "both")
    assert {t for t in both if t.endswith("/segments")} == {f"{raw}/segments", f"{packed}/segments"}
    for topic in (raw, packed):  # alone, the compressed topic keeps today's name <raw topic>/segments
        process_bag(bag, tmp_path / topic[-4:], predictor,
                    BagOptions([topic], prompts={topic: prompts[topic]}, params=PARAMS))
        alone = read_bag(tmp_path / topic[-4:])
        assert {t for t in alone if t.endswith("/segments")} == {f"{raw}/segments"}
        together = both[f"{topic}/segments"]
        assert len(together) == len(alone[f"{raw}/segments"]) == 3
        for (t_got, got, _), (t_ref, ref, _) in zip(together, alone[f"{raw}/segments"]):
            got_segments, ref_segments = msg_to_segments(got), msg_to_segments(ref)
            assert t_got == t_ref and len(got_segments) == len(ref_segments) > 0
            for seg, other in zip(got_segments, ref_segments):
                assert np.array_equal(seg.mask, other.mask) and seg.level == other.level
                assert seg.iou_score == pytest.approx(other.iou_score, abs=1e-5)
        assert [m.header.frame_id for _, m, _ in both[f"{topic}/overlay"]] == [
            m.header.frame_id for _, m, _ in alone[f"{raw}/overlay"]]


def test_an_output_topic_taken_in_the_input_suggests_what_works(tmp_path):
    bag = write_bag(tmp_path / "in", "sqlite3", [(t, IMAGE, T0, raw_image(make_header(TYPES, T0, "c"), "rgb8",
                                                                             scene(0)))
                                                 for t in (HEAD, WRIST, f"{HEAD}/segments")])
    with pytest.raises(BagError, match=f"process {HEAD} in a run of its own with --segments-topic$"):
        plan_bag(bag, tmp_path / "out", BagOptions([HEAD, WRIST], auto=True))
    with pytest.raises(BagError, match="choose another with --segments-topic$"):
        plan_bag(bag, tmp_path / "out", BagOptions([HEAD], auto=True))
    plan = plan_bag(bag, tmp_path / "out", BagOptions([HEAD], auto=True, segments_topic="/seg"))
    assert plan.cameras[HEAD].names["segments"][0] == "/seg" and not (tmp_path / "out").exists()
