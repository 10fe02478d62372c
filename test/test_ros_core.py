"""The node's ROS-free core with a fake predictor and rosbags message types (no torch model, no rclpy)."""
from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest

pytest.importorskip("rosbags")

from semsam_ros.types import make_segment  # noqa: E402
from semsam_ros.ros.convert import PromptRequest, make_header, msg_to_segments, stamp_to_ns  # noqa: E402
from semsam_ros.ros.params import RUNTIME_PARAMS, NodeParams  # noqa: E402
from semsam_ros.ros.scheduler import Scheduler  # noqa: E402
from semsam_ros.ros.images import array_to_image, rgb_to_image  # noqa: E402
from semsam_ros.ros.typestore import message_types  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
H, W = 12, 16
SEC = 1_000_000_000


class FakePredictor:
    """Level k of a point prompt is a square of half-size k around it; of a box prompt, the box. Scores 1 - k/10."""

    def __init__(self) -> None:
        self.encoded: list[np.ndarray] = []
        self.batches: list[int] = []  # images per encode_batch call
        self.embedding = None
        self.predict_calls: list[tuple[np.ndarray, np.ndarray]] = []

    def encode(self, image: np.ndarray):
        self.encoded.append(image)
        return SimpleNamespace(index=len(self.encoded), shape=image.shape[:2])

    def encode_batch(self, images):
        self.batches.append(len(images))
        return [self.encode(image) for image in images]

    def set_embedding(self, embedding) -> None:
        self.embedding = embedding

    def predict(self, points, boxes, levels=(1, 2, 3, 4, 5, 6)):
        self.predict_calls.append((points, boxes, levels))
        height, width = self.embedding.shape
        prompts = [("point", p) for p in points] + [("box", b) for b in boxes]
        logits = np.full((len(prompts), 6, height, width), -5.0, np.float32)
        ys, xs = np.mgrid[:height, :width]
        for i, (kind, c) in enumerate(prompts):
            for k in range(6):
                if kind == "point":
                    inside = (np.abs(xs - c[0]) <= k + 1) & (np.abs(ys - c[1]) <= k + 1)
                else:
                    inside = (xs >= c[0]) & (xs < c[2]) & (ys >= c[1]) & (ys < c[3])
                logits[i, k][inside] = 5.0
        scores = np.tile(1.0 - np.arange(1, 7, dtype=np.float32) / 10, (len(prompts), 1))
        columns = [level - 1 for level in levels]
        return SimpleNamespace(mask_logits=logits[:, columns], iou_scores=scores[:, columns])


def fake_postprocess(mask_logits, iou_scores, levels, prompt_id, point, params):
    return [
        make_segment(mask_logits[i] > 0, level, iou_scores[i], prompt_id=prompt_id, point=point)
        for i, level in enumerate(levels)
        if round(float(iou_scores[i]), 2) >= params.score_threshold
    ]


def number_segments(rgb, segments):
    for i, seg in enumerate(segments):
        seg.id = i
    return segments


@dataclasses.dataclass
class FakePipeline:
    """Stands in for ros.pipeline.ModelPipeline: each step a callable (None: a step the test never reaches)."""

    postprocess: Callable = fake_postprocess
    automatic: Callable | None = None
    annotate: Callable = number_segments
    select_text: Callable | None = None
    measure_3d: Callable | None = None
    set_vocabulary: Callable | None = None
    class_names: Callable | None = None

    @property
    def semantics(self) -> bool:
        return self.select_text is not None or self.set_vocabulary is not None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def types():
    return message_types("humble")


@pytest.fixture
def logs():
    return []


def make_core(types, logs, clock=None, predictor=None, pipeline=None, **params):
    return Scheduler(
        NodeParams(**params), predictor or FakePredictor(), types, pipeline or FakePipeline(),
        model_id="tiny-0123456789ab", log=logs.append, clock=clock or Clock(),
    )


def frame(types, stamp_ns: int, value: int = 0, frame_id: str = "cam"):
    return rgb_to_image(types, np.full((H, W, 3), value, np.uint8), make_header(types, stamp_ns, frame_id))


def image_with_encoding(types, stamp_ns: int, encoding: str):
    msg = rgb_to_image(types, np.zeros((H, W, 3), np.uint8), make_header(types, stamp_ns, "cam"))
    return dataclasses.replace(msg, encoding=encoding)


def point_prompt(prompt_id=0, x=5.0, y=6.0, stamp_ns=0, **fields):
    return PromptRequest(prompt_id=prompt_id, points=np.array([[x, y]]), stamp_ns=stamp_ns, **fields)


# --- parameters ---------------------------------------------------------------------------------------------------


def test_default_params_are_valid_and_mirrored_in_config():
    yaml = pytest.importorskip("yaml")
    assert NodeParams().validate() == []
    text = (ROOT / "config/semsam.yaml").read_text()
    defaults = dataclasses.asdict(NodeParams())
    # ROS 2 parameter files cannot hold empty lists (no element type): those are commented out, with an example
    empty = {name for name, value in defaults.items() if value == []}
    assert empty == {"cameras", "vocabulary_objects", "vocabulary_parts"}
    assert yaml.safe_load(text)["/**"]["ros__parameters"] == {k: v for k, v in defaults.items() if k not in empty}
    commented = {m.group(1) for m in re.finditer(r"^\s+# (\w+): \[", text, re.M)}
    assert empty <= commented
    marked = {m.group(1) for m in re.finditer(r"^\s+(?:# )?(\w+):.*\(runtime\)", text, re.M)}
    assert marked == RUNTIME_PARAMS


def test_every_param_is_documented():
    text = (ROOT / "docs/ros.md").read_text()
    for f in dataclasses.fields(NodeParams):
        assert f"| `{f.name}` |" in text, f.name


@pytest.mark.parametrize(
    "name, value",
    [("device", "gpu"), ("backend", "onnx"), ("mode", "sometimes"), ("auto_rate_hz", 0.0), ("auto_levels", [0, 3]),
     ("auto_levels", []), ("dedupe_iou", 1.5), ("buffer_size", 0), ("label_image_level", 7),
     ("image_transport", "theora"), ("score_threshold", float("nan")), ("max_stamp_diff", -1.0),
     ("vocabulary_parts", ["handle", " "]), ("text_top_k", 0), ("cameras", ["head", "head"]), ("cameras", ["2nd"])],
)
def test_bad_param_values_are_explained(name, value):
    reasons = NodeParams(semantics=True, **{name: value}).validate()
    assert len(reasons) == 1 and reasons[0].startswith(name)


def test_from_dict_and_update_params(types, logs):
    with pytest.raises(ValueError, match="unknown parameter.*bogus"):
        NodeParams.from_dict({"bogus": 1})
    core = make_core(types, logs)
    with pytest.raises(ValueError, match="mode must be one of"):
        core.update_params(NodeParams(mode="never"))
    core.update_params(NodeParams.from_dict({"score_threshold": 0.75}))
    core.submit_frame(frame(types, 5 * SEC))
    core.submit_prompt(point_prompt())
    (out,) = core.step()
    assert sorted(s.level for s in out.segments) == [1, 2]  # scores 0.9, 0.8 clear 0.75


# --- frames, prompts and stamps --------------------------------------------------------------------------------------


def test_prompt_answered_on_the_frame_nearest_its_stamp(types, logs):
    predictor = FakePredictor()
    core = make_core(types, logs, predictor=predictor)
    for i, t in enumerate([1.0, 1.1, 1.2]):
        core.submit_frame(frame(types, int(t * SEC), value=i, frame_id=f"cam{i}"))
    assert predictor.encoded == []  # nothing is decoded or encoded without work
    core.submit_prompt(point_prompt(stamp_ns=int(1.08 * SEC)))
    (out,) = core.step()
    assert out.message.header.frame_id == "cam1" and stamp_to_ns(out.message.header.stamp) == int(1.1 * SEC)
    assert out.frame.rgb[0, 0, 0] == 1 and len(predictor.encoded) == 1
    assert out.message.model_id == "tiny-0123456789ab" and (out.message.height, out.message.width) == (H, W)
    assert [s.level for s in out.segments] == [1, 2, 3, 4, 5] and all(s.prompt_id == 0 for s in out.segments)
    assert [s.id for s in out.segments] == [0, 1, 2, 3, 4]
    assert out.message.encode_ms > 0 and out.message.total_ms >= out.message.encode_ms


def test_encoder_runs_once_per_frame(types, logs):
    predictor = FakePredictor()
    core = make_core(types, logs, predictor=predictor)
    core.submit_frame(frame(types, 2 * SEC))
    core.submit_prompt(point_prompt(prompt_id=1, stamp_ns=2 * SEC))
    (first,) = core.step()
    core.submit_frame(frame(types, 3 * SEC))  # a newer frame arrives; the next prompt is stamped for the old one
    core.submit_prompt(point_prompt(prompt_id=2, x=9, stamp_ns=2 * SEC))
    (second,) = core.step()
    assert len(predictor.encoded) == 1 and second.frame is first.frame
    assert second.message.encode_ms == 0.0 and stamp_to_ns(second.message.header.stamp) == 2 * SEC


def test_zero_stamp_means_newest_frame(types, logs):
    core = make_core(types, logs)
    core.submit_frame(frame(types, 1 * SEC))
    core.submit_frame(frame(types, 2 * SEC))
    core.submit_prompt(point_prompt())
    (out,) = core.step()
    assert stamp_to_ns(out.message.header.stamp) == 2 * SEC


def test_stale_and_early_prompts_are_rejected_and_logged_once(types, logs):
    core = make_core(types, logs)
    core.submit_prompt(point_prompt())
    assert core.step() == []
    core.submit_frame(frame(types, 10 * SEC))
    core.submit_prompt(point_prompt(stamp_ns=5 * SEC))
    core.submit_prompt(point_prompt(stamp_ns=6 * SEC))
    assert core.step() == []
    stats = core.stats()
    assert stats["prompts_rejected"] == 3 and stats["prompts_answered"] == 0
    assert stats["errors"] == {"prompt/PromptError/no_frame": 1, "prompt/PromptError/stamp": 2}
    assert len(logs) == 2 and "no camera frame" in logs[0] and "max_stamp_diff" in logs[1]


def test_error_log_is_throttled_per_cause(types, logs):
    clock = Clock()
    core = make_core(types, logs, clock=clock, error_log_period=10.0)
    core.submit_frame(frame(types, 10 * SEC))
    for t in (0.0, 5.0, 10.5):
        clock.now += t
        core.submit_prompt(point_prompt(stamp_ns=1 * SEC))
        core.step()
    assert core.errors.counts == {"prompt/PromptError/stamp": 3}
    assert len(logs) == 2 and logs[1].endswith("[prompt/PromptError/stamp: 3 so far]")


def test_prompt_outside_the_image_does_not_block_others(types, logs):
    core = make_core(types, logs)
    core.submit_frame(frame(types, SEC))
    core.submit_prompt(point_prompt(prompt_id=1, x=W + 5))
    core.submit_prompt(PromptRequest(prompt_id=2, boxes=np.array([[2.0, 2.0, 8.0, 7.0]])))
    (out,) = core.step()
    assert {s.prompt_id for s in out.segments} == {2} and len(out.prompts) == 1
    assert core.stats()["errors"] == {"prompt/PromptError/outside": 1}
    assert all(s.bbox == (2, 2, 8, 7) for s in out.segments)


def test_a_point_is_a_pixel_of_the_image(types, logs):
    core = make_core(types, logs)
    core.submit_frame(frame(types, SEC))
    for prompt_id, (x, y) in enumerate([(W, 0.0), (0.0, H), (W - 1, H - 1), (W - 0.5, 0.0)]):
        core.submit_prompt(point_prompt(prompt_id=prompt_id, x=x, y=y, levels=(1,)))
    (out,) = core.step()
    assert [p.prompt_id for p in out.prompts] == [2, 3]  # column W and row H do not exist
    assert core.stats()["errors"] == {"prompt/PromptError/outside": 2}


def test_text_only_prompt_without_semantics_is_rejected_before_any_work(types, logs):
    calls = []
    predictor = FakePredictor()
    core = make_core(types, logs, predictor=predictor,
                     pipeline=FakePipeline(automatic=fake_automatic(calls)))
    core.submit_frame(frame(types, SEC))
    core.submit_prompt(PromptRequest(prompt_id=5, text="handle"))
    assert core.step() == []
    assert calls == [] and predictor.encoded == []  # neither the automatic generator nor the encoder ran
    assert core.errors.counts == {"prompt/PromptError/text_without_semantics": 1}
    assert "needs semantics" in logs[-1]
    future = core.request(PromptRequest(prompt_id=6, text="handle"))  # the service: the same rule
    core.step()
    with pytest.raises(ValueError, match="needs semantics"):
        future.result(timeout=1)
    assert predictor.encoded == []


def test_requested_levels_reach_the_postprocessing(types, logs):
    seen = []

    def spy(mask_logits, iou_scores, levels, *args):
        seen.append((mask_logits.shape, tuple(levels)))
        return fake_postprocess(mask_logits, iou_scores, levels, *args)

    core = make_core(types, logs, pipeline=FakePipeline(postprocess=spy))
    core.submit_frame(frame(types, SEC))
    core.submit_prompt(point_prompt(levels=(2, 4)))
    (out,) = core.step()
    assert seen == [((2, H, W), (2, 4))] and [s.level for s in out.segments] == [2, 4]
    assert out.segments[1].area == 9 * 9  # level 4: half-size 4 around (5, 6)
    assert core.processor.predictor.predict_calls[0][2] == (2, 4)  # only these levels were computed


def test_a_batch_asks_for_the_union_of_its_prompts_levels(types, logs):
    core = make_core(types, logs)
    core.submit_frame(frame(types, SEC))
    core.submit_prompt(point_prompt(prompt_id=1, levels=(5, 2)))
    core.submit_prompt(point_prompt(prompt_id=2, x=9.0, levels=(4,)))
    (out,) = core.step()
    assert [c[2] for c in core.processor.predictor.predict_calls] == [(2, 4, 5)]
    assert [(s.prompt_id, s.level) for s in out.segments] == [(1, 5), (1, 2), (2, 4)]  # each prompt's own order
    assert [s.area for s in out.segments] == [11 * 11, 5 * 5, 9 * 9]


def test_many_prompts_are_batched_in_order(types, logs):
    predictor = FakePredictor()
    core = make_core(types, logs, predictor=predictor)
    core.submit_frame(frame(types, SEC))
    points = np.array([[x % W, 3.0] for x in range(20)], dtype=float)
    core.submit_prompt(PromptRequest(prompt_id=7, points=points, boxes=np.array([[0.0, 0.0, 4.0, 4.0]]),
                                     levels=(1,)))
    (out,) = core.step()
    assert [len(p) + len(b) for p, b, _ in predictor.predict_calls] == [16, 5]
    assert [s.point for s in out.segments] == [tuple(p) for p in points] + [None]
    assert out.segments[-1].bbox == (0, 0, 4, 4)


# --- sticky prompts, the latest-frame slot and automatic mode -------------------------------------------------------


def test_sticky_prompts_follow_the_newest_frame_and_drops_are_counted(types, logs):
    predictor = FakePredictor()
    core = make_core(types, logs, predictor=predictor)
    core.submit_frame(frame(types, 1 * SEC))
    core.submit_prompt(point_prompt(prompt_id=3, sticky=True, levels=(1,)))
    assert [stamp_to_ns(o.message.header.stamp) for o in core.step()] == [1 * SEC]
    for t in (2, 3, 4):  # the worker was busy: only the newest frame is processed
        core.submit_frame(frame(types, t * SEC))
    (out,) = core.step()
    assert stamp_to_ns(out.message.header.stamp) == 4 * SEC and [s.prompt_id for s in out.segments] == [3]
    stats = core.stats()
    assert stats["frames_dropped"] == 2 and stats["frames_received"] == 4 and stats["sticky_prompts"] == 1
    assert len(predictor.encoded) == stats["frames_encoded"] == 2  # frames 2 and 3 were never decoded nor encoded
    assert stats["results"] == 2
    core.submit_prompt(PromptRequest(prompt_id=3))  # no point, box or text: removes the sticky prompt
    core.submit_frame(frame(types, 5 * SEC))
    assert core.step() == [] and core.sticky_prompts() == []


def test_new_sticky_prompt_is_answered_once_on_the_newest_frame(types, logs):
    core = make_core(types, logs)
    core.submit_frame(frame(types, 1 * SEC))
    core.submit_prompt(point_prompt(prompt_id=1, sticky=True, levels=(1,)))
    core.submit_frame(frame(types, 2 * SEC))  # the prompt's own frame and the slot frame are the same
    (out,) = core.step()
    assert [s.prompt_id for s in out.segments] == [1]


def test_clear_prompts(types, logs):
    core = make_core(types, logs)
    core.submit_prompt(point_prompt(prompt_id=1, sticky=True))
    core.submit_prompt(point_prompt(prompt_id=2, sticky=True))
    future = core.request(point_prompt())
    assert core.clear_prompts() == 2 and core.sticky_prompts() == []
    with pytest.raises(ValueError, match="cleared"):
        future.result(timeout=1)


def fake_automatic(calls):
    def automatic(predictor, rgb, levels, params):
        predictor.set_image(rgb)  # must reuse the frame's embedding, not encode again
        calls.append(levels)
        return [make_segment(np.eye(H, W, dtype=bool), level, 0.95) for level in levels]
    return automatic


def test_automatic_mode_runs_at_its_rate_without_reencoding(types, logs):
    clock, calls, predictor = Clock(), [], FakePredictor()
    core = make_core(types, logs, clock=clock, predictor=predictor, mode="auto", auto_rate_hz=2.0,
                     auto_levels=[3, 6], pipeline=FakePipeline(automatic=fake_automatic(calls)))
    stamps = []
    for i in range(8):  # 8 Hz camera, 2 Hz automatic mode
        core.submit_frame(frame(types, (i + 1) * SEC // 8))
        stamps += [stamp_to_ns(o.message.header.stamp) for o in core.step()]
        clock.now += 0.125
    assert stamps == [SEC // 8, 5 * SEC // 8] and calls == [(3, 6), (3, 6)]
    assert len(predictor.encoded) == 2 and core.stats()["frames_dropped"] == 0


def test_both_mode_merges_prompts_and_automatic_segments(types, logs):
    calls = []
    core = make_core(types, logs, mode="both", auto_levels=[2],
                     pipeline=FakePipeline(automatic=fake_automatic(calls)))
    core.submit_prompt(point_prompt(prompt_id=4, sticky=True, levels=(1,)))
    core.submit_frame(frame(types, SEC))
    (out,) = core.step()
    assert [(s.prompt_id, s.level, s.id) for s in out.segments] == [(4, 1, 0), (-1, 2, 1)]
    assert [s.prompt_id for s in out.message.segments] == [4, -1]


# --- text, semantics and 3D steps --------------------------------------------------------------------------------------


def labelling(rgb, segments):
    for i, seg in enumerate(segments):
        seg.id = 10 + i
        seg.label = "handle" if seg.level >= 4 else "mug"
        seg.parent_id = 10 if seg.level >= 4 else -1
    return segments


def by_label(segments, text, rgb, point, top_k):
    """Fake select: masks labelled ``text`` holding ``point``, finest first."""
    held = [s for s in segments if point is None or s.mask[int(point[1]), int(point[0])]]
    return sorted((s for s in held if s.label == text), key=lambda s: -s.level)[:top_k]


def recording(calls):
    def select(segments, text, rgb, point, top_k):
        calls.append(([s.level for s in segments], text, point, top_k))
        return by_label(segments, text, rgb, point, top_k)

    return select


@pytest.mark.parametrize("top_k, kept", [(1, [(1, 5, "handle")]), (2, [(1, 4, "handle"), (1, 5, "handle")])])
def test_text_selects_among_a_prompts_masks(types, logs, top_k, kept):
    calls = []
    core = make_core(types, logs, text_top_k=top_k,
                     pipeline=FakePipeline(annotate=labelling, select_text=recording(calls)))
    core.submit_frame(frame(types, SEC))
    core.submit_prompt(point_prompt(prompt_id=1, text="handle"))
    core.submit_prompt(point_prompt(prompt_id=2, levels=(1,)))
    (out,) = core.step()
    assert [(s.prompt_id, s.level, s.label) for s in out.segments] == kept + [(2, 1, "mug")]
    assert all(s.parent_id == -1 for s in out.segments)  # the parent (id 10) was filtered out
    assert calls == [([1, 2, 3, 4, 5], "handle", (5.0, 6.0), top_k)]  # the prompt's own masks, with its point


def test_text_selects_per_point_and_among_boxes(types, logs):
    calls = []
    core = make_core(types, logs, pipeline=FakePipeline(annotate=labelling,
                                              select_text=recording(calls)))
    core.submit_frame(frame(types, SEC))
    core.submit_prompt(PromptRequest(prompt_id=3, points=np.array([[2.0, 2.0], [12.0, 9.0]]),
                                     boxes=np.array([[0, 0, 8, 8]]), levels=(3, 4), text="handle"))
    (out,) = core.step()
    assert [(c[0], c[2]) for c in calls] == [([3, 4], (2.0, 2.0)), ([3, 4], (12.0, 9.0)), ([3, 4], None)]
    kept = [(s.level, s.point) for s in out.segments]
    assert kept == [(4, (2.0, 2.0)), (4, (12.0, 9.0)), (4, None)]  # the best of each point, and of the box


def test_text_without_semantics_is_ignored_and_logged(types, logs):
    core = make_core(types, logs)
    core.submit_frame(frame(types, SEC))
    core.submit_prompt(point_prompt(text="handle", levels=(1, 2)))
    (out,) = core.step()
    assert len(out.segments) == 2 and core.errors.counts == {"prompt/text_without_semantics": 1}


def test_text_only_prompt_searches_automatic_masks(types, logs):
    calls = []
    core = make_core(types, logs, pipeline=FakePipeline(automatic=fake_automatic(calls),
                                              annotate=labelling, select_text=by_label))
    core.submit_frame(frame(types, SEC))
    core.submit_prompt(PromptRequest(prompt_id=5, text="handle", levels=(3, 4)))
    (out,) = core.step()
    assert calls == [(3, 4)] and [(s.prompt_id, s.level, s.label) for s in out.segments] == [(5, 4, "handle")]


def test_text_only_prompt_shares_the_automatic_run(types, logs):
    calls, selections = [], []
    core = make_core(types, logs, mode="both", auto_levels=[3, 4], text_top_k=2,
                     pipeline=FakePipeline(automatic=fake_automatic(calls), annotate=labelling,
                                 select_text=recording(selections)))
    core.submit_frame(frame(types, SEC))
    core.submit_prompt(PromptRequest(prompt_id=5, text="handle"))
    (out,) = core.step()
    assert calls == [(3, 4)]  # one automatic run serves the automatic output and the text search
    assert selections == [([3, 4], "handle", None, 2)]
    assert [(s.prompt_id, s.level) for s in out.segments] == [(5, 4), (-1, 3), (-1, 4)]
    assert len({id(s) for s in out.segments}) == 3 and len({s.id for s in out.segments}) == 3


# --- vocabulary at run time ---------------------------------------------------------------------------------------


class FakeVocabulary:
    """What pipeline.ModelPipeline does with a labeller, with plain lists."""

    def __init__(self) -> None:
        self.calls = []
        self.objects, self.parts = ["mug", "bottle"], ["handle", "lid"]

    def set(self, file, objects, parts):
        self.calls.append((file, list(objects), list(parts)))
        new = (list(objects) or ["mug", "bottle"], list(parts) or ["handle", "lid"])
        changed = new != (self.objects, self.parts)
        self.objects, self.parts = new
        return changed

    def names(self):
        return list(self.objects), list(self.parts)


def vocabulary_core(types, logs, vocab, **params):
    pipeline = FakePipeline(set_vocabulary=vocab.set, class_names=vocab.names)
    return make_core(types, logs, pipeline=pipeline, semantics=True, **params)


def test_vocabulary_parameters_apply_at_run_time(types, logs):
    vocab = FakeVocabulary()
    core = vocabulary_core(types, logs, vocab)
    assert core.class_names() == ["unknown", "mug", "bottle", "handle", "lid"]
    assert core.update_params(dataclasses.replace(core.params, score_threshold=0.6)) is False
    assert vocab.calls == []  # no vocabulary parameter changed: the labeller is not touched
    assert core.update_params(dataclasses.replace(core.params, vocabulary_parts=["knob"])) is True
    assert vocab.calls == [("", [], ["knob"])] and core.class_names()[-1] == "knob"
    assert core.params.vocabulary_parts == ["knob"]
    with pytest.raises(ValueError, match="vocabulary_objects must be a list of non-empty names"):
        core.update_params(dataclasses.replace(core.params, vocabulary_objects=[""]))
    assert len(vocab.calls) == 1 and core.params.vocabulary_objects == []


def test_bad_vocabulary_file_changes_nothing(types, logs):
    def refuse(file, objects, parts):
        raise ValueError(f"cannot read the vocabulary {file}")

    core = make_core(types, logs, pipeline=FakePipeline(set_vocabulary=refuse), semantics=True)
    with pytest.raises(ValueError, match="cannot read the vocabulary /missing.yaml"):
        core.update_params(dataclasses.replace(core.params, vocabulary="/missing.yaml", score_threshold=0.7))
    assert core.params.vocabulary == "" and core.params.score_threshold == 0.5


def test_set_vocabulary_request(types, logs):
    vocab = FakeVocabulary()
    core = vocabulary_core(types, logs, vocab)
    params = core.vocabulary_update(["cup"], [])
    assert (params.vocabulary_objects, params.vocabulary_parts) == (["cup"], [])
    assert core.set_vocabulary(["cup"], []) == (True, "vocabulary changed: 1 objects, 2 parts")
    assert core.set_vocabulary([], ["spout"]) == (True, "vocabulary changed: 1 objects, 1 parts")
    assert vocab.objects == ["cup"]  # the empty objects list kept the current ones
    assert core.set_vocabulary([], []) == (False, "vocabulary unchanged: 1 objects, 1 parts")
    assert core.set_vocabulary(["cup"], ["spout"]) == (False, "vocabulary unchanged: 1 objects, 1 parts")
    with pytest.raises(ValueError, match="non-empty names"):
        core.vocabulary_update(["cup", "  "], [])


def test_set_vocabulary_without_semantics(types, logs):
    core = make_core(types, logs)
    with pytest.raises(ValueError, match="semantics is off"):
        core.set_vocabulary(["cup"], [])
    assert core.class_names() == ["unknown"] and core.vocabulary_summary(False) == "no vocabulary (semantics is off)"
    for name, value in [("vocabulary_parts", ["knob"]), ("vocabulary_objects", ["cup"]), ("vocabulary", "v.yaml")]:
        with pytest.raises(ValueError, match=f"{name} needs semantics: true"):  # the parameters: the same rule
            core.update_params(dataclasses.replace(core.params, **{name: value}))
    assert core.params.vocabulary_parts == []


def test_3d_hook_fills_the_message(types, logs):
    seen = []

    def measure(segments, depth_m, camera_info):
        seen.append((depth_m.dtype, float(np.nanmax(depth_m)), camera_info.k[0]))
        return [SimpleNamespace(valid=True, position=(0, 0, 1.5), box_center=(0, 0, 1.6), orientation=(0, 0, 0, 1),
                                size=(0.1, 0.2, 0.3), normal=(0, 0, -1), axis=(1, 0, 0), grasp_point=(0, 0, 1.4),
                                grasp_normal=(0, 0, -1), grasp_pixel=(8, 6), point_count=int(s.area),
                                valid_ratio=1.0) for s in segments]

    core = make_core(types, logs, pipeline=FakePipeline(measure_3d=measure))
    header = make_header(types, SEC, "cam")
    depth = array_to_image(types, np.full((H, W), 1500, np.uint16), "16UC1", header)
    info = SimpleNamespace(k=[500.0, 0, 8, 0, 500.0, 6, 0, 0, 1])
    core.submit_frame(rgb_to_image(types, np.zeros((H, W, 3), np.uint8), header), depth, info)
    core.submit_prompt(point_prompt(levels=(1,)))
    (out,) = core.step()
    assert seen == [(np.float32, pytest.approx(1.5), 500.0)]
    (seg,) = out.message.segments
    assert seg.has_3d and seg.centroid.z == 1.5 and seg.pose.position.z == pytest.approx(1.6) and seg.point_count == 9
    assert seg.size.z == pytest.approx(0.3) and seg.valid_depth_ratio == 1.0 and seg.normal.z == -1.0
    assert seg.grasp_point.z == pytest.approx(1.4) and (seg.grasp_pixel_x, seg.grasp_pixel_y) == (8, 6)


# --- bad input, failures, services, threads ---------------------------------------------------------------------------


def test_an_image_over_max_image_pixels_is_rejected_by_cause(types, logs):
    predictor = FakePredictor()
    core = make_core(types, logs, predictor=predictor, max_image_pixels=H * W - 1)
    core.submit_frame(frame(types, SEC))
    core.submit_prompt(point_prompt())
    assert core.step() == [] and predictor.encoded == []
    assert core.errors.counts == {"image/InputRejected/too_large": 1}
    core.update_params(dataclasses.replace(core.params, max_image_pixels=H * W))  # a parameter of the next frame
    core.submit_frame(frame(types, 2 * SEC))
    core.submit_prompt(point_prompt())
    assert len(core.step()) == 1


def test_unsupported_encoding_is_counted_not_fatal(types, logs):
    core = make_core(types, logs)
    core.submit_frame(image_with_encoding(types, SEC, "bayer_rggb8"))
    core.submit_prompt(point_prompt())
    core.submit_prompt(point_prompt())
    assert core.step() == []
    assert core.errors.counts == {"image/UnsupportedEncodingError/bayer_rggb8": 1}
    assert "'bayer_rggb8'" in logs[0]
    core.submit_frame(frame(types, 2 * SEC))
    core.submit_prompt(point_prompt())
    assert len(core.step()) == 1


def test_failing_model_is_counted_not_fatal(types, logs):
    class Broken(FakePredictor):
        def encode(self, image):
            raise RuntimeError("CUDA out of memory")

    core = make_core(types, logs, predictor=Broken())
    core.submit_frame(frame(types, SEC))
    core.submit_prompt(point_prompt())
    assert core.step() == [] and core.errors.counts == {"inference/RuntimeError": 1}
    assert "CUDA out of memory" in logs[0]


def test_service_requests(types, logs):
    core = make_core(types, logs)
    core.submit_frame(frame(types, SEC, frame_id="buffered"))
    own = rgb_to_image(types, np.zeros((H + 4, W, 3), np.uint8), make_header(types, 77, "own"))
    on_own = core.request(point_prompt(levels=(1,), sticky=True), own)
    on_buffered = core.request(point_prompt(levels=(1,)))
    outside = core.request(point_prompt(x=-3))
    assert core.step() == []  # service results go to their callers only
    msg = on_own.result(timeout=1)
    assert msg.header.frame_id == "own" and stamp_to_ns(msg.header.stamp) == 77 and msg.height == H + 4
    assert on_buffered.result(timeout=1).header.frame_id == "buffered"
    with pytest.raises(ValueError, match="not inside the 16x12 image"):
        outside.result(timeout=1)
    assert core.sticky_prompts() == []  # a service prompt never becomes sticky


def test_an_empty_prompt_is_never_segmented(types, logs):
    predictor = FakePredictor()
    core = make_core(types, logs, predictor=predictor)
    core.submit_frame(frame(types, SEC))
    empty = core.request(PromptRequest(prompt_id=4))  # the service refuses it
    core.submit_prompt(PromptRequest(prompt_id=4))  # the topic takes it as "remove sticky prompt 4"
    assert core.step() == []
    with pytest.raises(ValueError, match="prompt 4: no point, box or text"):
        empty.result(timeout=1)
    assert predictor.encoded == [] and core.stats()["prompts_received"] == 2


def test_segments_decode_back_from_the_message(types, logs):
    core = make_core(types, logs)
    core.submit_frame(frame(types, SEC))
    core.submit_prompt(point_prompt(levels=(1, 3)))
    (out,) = core.step()
    back = msg_to_segments(out.message)
    for a, b in zip(out.segments, back):
        np.testing.assert_array_equal(a.mask, b.mask)
    assert [b.area for b in back] == [9, 49]


def test_worker_thread(types, logs):
    core = make_core(types, logs)
    outputs, stop = [], threading.Event()

    def worker():
        while not stop.is_set():
            if core.wait_for_work(0.05):
                outputs.extend(core.step())

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        core.submit_frame(frame(types, SEC))
        core.submit_prompt(point_prompt(levels=(1,)))
        for _ in range(200):
            if outputs:
                break
            threading.Event().wait(0.01)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert len(outputs) == 1 and not thread.is_alive()
    stats = core.stats()
    assert stats["prompts_answered"] == 1 and stats["rate_hz"] > 0 and stats["latency_ms"] > 0


def test_release_drops_buffered_frames(types, logs):
    core = make_core(types, logs)
    core.submit_frame(frame(types, SEC))
    core.release()
    core.submit_prompt(point_prompt())
    assert core.step() == [] and core.stats()["buffered_frames"] == 0


def test_diagnostics_warn_on_new_errors(types, logs):
    core = make_core(types, logs)
    level, summary, values = core.diagnostics()
    assert level == 0 and values["frames_received"] == "0" and values["model_id"] == "tiny-0123456789ab"
    core.submit_prompt(point_prompt())
    core.step()
    level, summary, values = core.diagnostics()
    assert level == 1 and "prompt/PromptError/no_frame" in summary
    assert values["errors/prompt/PromptError/no_frame"] == "1" and values["prompts_rejected"] == "1"
    assert core.diagnostics()[0] == 0  # no new error since
