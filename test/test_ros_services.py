"""The node's service answers (ros.services) with rosbags request/response messages and a Scheduler over fakes."""
from __future__ import annotations

import dataclasses
import threading
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags")

from semsam_ros.ros import services  # noqa: E402
from semsam_ros.ros.convert import PromptRequest, make_header, prompt_to_msg  # noqa: E402
from semsam_ros.ros.images import rgb_to_image  # noqa: E402
from semsam_ros.ros.msgtypes import MessageTypes  # noqa: E402
from semsam_ros.ros.typestore import make_typestore  # noqa: E402
from test_ros_core import SEC, FakeVocabulary, frame, make_core, vocabulary_core  # noqa: E402

STORE = make_typestore("humble")
TYPES = MessageTypes.from_typestore(STORE)


def request(name: str, **fields):
    return TYPES.make(f"semsam_ros/srv/{name}_Request", **fields)


def response(name: str) -> SimpleNamespace:
    """An empty response; ``answered`` checks that what the service filled is a valid message of its type."""
    return SimpleNamespace(srv=name)


def answered(filled: SimpleNamespace) -> SimpleNamespace:
    fields = {k: v for k, v in vars(filled).items() if k != "srv"}
    if "track_ids" in fields or "stopped" in fields:
        fields = {k: np.asarray(v, dtype=np.int32) if k in ("track_ids", "stopped") else v for k, v in fields.items()}
    msgtype = f"semsam_ros/srv/{filled.srv}_Response"
    STORE.serialize_cdr(TYPES.make(msgtype, **fields), msgtype)  # every field set, with its type
    return filled


@contextmanager
def worker(core):
    """The node's worker thread: steps the core while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if core.wait_for_work(0.02):
                core.step()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_segment_answers_on_its_own_image_and_refuses_what_it_cannot_answer():
    logs = []
    core = make_core(TYPES, logs)
    image = rgb_to_image(TYPES, np.zeros((12, 16, 3), np.uint8), make_header(TYPES, 77, "own"))
    ask = request("Segment", prompt=prompt_to_msg(TYPES, PromptRequest(3, np.array([[5.0, 6.0]]), levels=(1,))),
                  image=image)
    inactive = services.segment(core, ask, response("Segment"), active=False)
    assert (inactive.success, inactive.message) == (False, "the node is not active")

    with worker(core):
        done = answered(services.segment(core, ask, response("Segment"), active=True, timeout_s=5.0))
        ask.prompt = prompt_to_msg(TYPES, PromptRequest(4))  # no point, box or text
        refused = services.segment(core, ask, response("Segment"), active=True, timeout_s=5.0)
    assert done.success and done.result.header.frame_id == "own" and [s.prompt_id for s in done.result.segments] == [3]
    assert not refused.success and "no point, box or text" in refused.message


def test_set_vocabulary_goes_through_the_parameters():
    vocab = FakeVocabulary()
    core = vocabulary_core(TYPES, [], vocab)
    applied = []

    def apply(changes):
        applied.append(changes)
        core.update_params(dataclasses.replace(core.params, **changes))
        return None

    done = answered(services.set_vocabulary(core, request("SetVocabulary", objects=[], parts=["knob"]),
                                            response("SetVocabulary"), apply))
    assert applied == [{"vocabulary_parts": ["knob"]}]
    assert done.success and done.message == "vocabulary changed: 2 objects, 1 parts" and list(done.parts) == ["knob"]
    query = services.set_vocabulary(core, request("SetVocabulary", objects=[], parts=[]), response("SetVocabulary"),
                                    apply)
    assert len(applied) == 1 and query.success and query.message.startswith("vocabulary unchanged")
    refused = services.set_vocabulary(core, request("SetVocabulary", objects=["cup"], parts=[]),
                                      response("SetVocabulary"), lambda changes: "parameter refused")
    assert (refused.success, refused.message) == (False, "parameter refused")


def test_set_vocabulary_without_semantics_is_refused():
    done = services.set_vocabulary(make_core(TYPES, []), request("SetVocabulary", objects=["cup"], parts=[]),
                                   response("SetVocabulary"), lambda changes: pytest.fail("nothing to apply"))
    assert not done.success and "semantics is off" in done.message and list(done.objects) == []


def test_track_untrack_and_clear_prompts():
    core = make_core(TYPES, [])
    core.submit_frame(frame(TYPES, SEC))
    prompts = [prompt_to_msg(TYPES, PromptRequest(1, np.array([[5.0, 6.0], [9.0, 3.0]]), levels=(4,))),
               prompt_to_msg(TYPES, PromptRequest(2, boxes=np.array([[0.0, 0.0, 4.0, 4.0]])))]
    started = answered(services.track(core, request("Track", prompts=prompts), response("Track")))
    assert started.success and list(started.track_ids) == [0, 1, 2]
    refused = services.track(core, request("Track", prompts=[prompts[0], prompt_to_msg(TYPES, PromptRequest(3))]),
                             response("Track"))
    assert not refused.success and list(refused.track_ids) == [] and sorted(core.tracker.tracks) == [0, 1, 2]
    stopped = answered(services.untrack(core, request("Untrack", track_ids=np.array([1], np.int32), all=False),
                                        response("Untrack")))
    assert list(stopped.stopped) == [1] and sorted(core.tracker.tracks) == [0, 2]
    everything = services.untrack(core, request("Untrack", track_ids=np.zeros(0, np.int32), all=True), response("Untrack"))
    assert sorted(everything.stopped) == [0, 2] and core.tracker.tracks == {}
    core.submit_prompt(PromptRequest(5, np.array([[1.0, 1.0]]), sticky=True))
    cleared = services.clear_prompts(core, None, SimpleNamespace())
    assert cleared.success and cleared.message == "cleared 1 sticky prompt(s)"
