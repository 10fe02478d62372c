"""Tracks in the node's ROS-free core: Prompt.track and ~/track start them, they are decoded with the frame's other
prompts in one predictor call, their masks carry track ids into the messages, captions and diagnostics."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rosbags")

from semsam_ros.ros.convert import PromptRequest, msg_to_segments, prompt_from_msg, prompt_to_msg  # noqa: E402
from semsam_ros.ros.outputs import overlay_captions  # noqa: E402
from semsam_ros.types import TRACK_TRACKING  # noqa: E402
from test_ros_core import SEC, FakePredictor, frame, make_core, point_prompt, types  # noqa: E402,F401


@pytest.fixture
def logs():
    return []


def test_a_track_prompt_is_decoded_with_the_sticky_prompts_in_one_call_per_frame(types, logs):
    predictor = FakePredictor()
    core = make_core(types, logs, predictor=predictor)
    core.submit_prompt(point_prompt(prompt_id=3, x=5, y=6, levels=(2,), track=True))
    core.submit_prompt(point_prompt(prompt_id=4, x=12, y=3, levels=(1,), sticky=True))
    for stamp in (1, 2, 3):
        core.submit_frame(frame(types, stamp * SEC))
        calls = len(predictor.predict_calls)
        (out,) = core.step()
        assert len(predictor.predict_calls) == calls + 1  # one decoder call for the sticky prompt and the track
        tracked = [s for s in out.segments if s.track_id >= 0]
        assert [(s.track_id, s.prompt_id, s.level, s.area) for s in tracked] == [(0, 3, 2, 25)]
        assert [p.prompt_id for p in out.prompts] == [4]  # the overlay draws the user's prompts only
        assert [(m.track_id, m.track_state) for m in out.message.segments] == [(-1, 0), (0, TRACK_TRACKING)]
    assert [s.track_id for s in msg_to_segments(out.message)] == [-1, 0]
    assert overlay_captions(out, semantics=False) == ["L1 0.90", "T0 L2 0.80"]


def test_track_and_untrack_requests_and_diagnostics(types, logs):
    core = make_core(types, logs, max_tracks=3)
    prompt = point_prompt(prompt_id=7, x=4, y=4, levels=(1,))
    prompt.points = np.array([[4.0, 4.0], [10.0, 8.0]])
    assert core.track(prompt) == [0, 1]
    with pytest.raises(ValueError, match="exceed max_tracks 3"):
        core.track(prompt)
    with pytest.raises(ValueError, match="text alone"):
        core.track(PromptRequest(prompt_id=8, text="lid"))
    core.submit_frame(frame(types, 1 * SEC))
    (out,) = core.step()
    assert sorted(s.track_id for s in out.segments) == [0, 1]
    assert core.stats()["tracks_tracking"] == 2
    assert core.untrack([1, 5]) == [1]
    assert core.untrack() == [0]
    stats = core.stats()
    assert (stats["tracks_tracking"], stats["tracks_lost"], stats["tracks_ended"]) == (0, 0, 2)
    assert core.track(point_prompt(prompt_id=9)) == [2]  # ids are never reused
    _, _, values = core.diagnostics()
    assert (values["tracks_tracking"], values["tracks_ended"]) == ("1", "2")


def test_prompt_track_flag_round_trips_through_the_message(types):
    prompt = point_prompt(prompt_id=2, track=True)
    assert prompt_from_msg(prompt_to_msg(types, prompt)).track is True
