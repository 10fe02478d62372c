"""The node's real pipeline (tiny random checkpoint, post-processing, part-of links, 3D) through the Scheduler,
checked against the Python API. No ROS needed: messages are rosbags types."""
from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags")
pytest.importorskip("torch")

from semsam_ros.inference.backends import BackendError  # noqa: E402
from semsam_ros.inference.postprocess import PostprocessParams, postprocess_prompt  # noqa: E402
from semsam_ros.ros.convert import PromptRequest, make_header, msg_to_segments  # noqa: E402
from semsam_ros.ros.params import NodeParams  # noqa: E402
from semsam_ros.ros.scheduler import Scheduler  # noqa: E402
from semsam_ros.ros.images import array_to_image, rgb_to_image  # noqa: E402
from semsam_ros.ros.pipeline import ModelPipeline, load_predictor  # noqa: E402
from semsam_ros.ros.typestore import message_types  # noqa: E402
from semsam_ros.testing import make_tiny_checkpoint  # noqa: E402

H, W = 96, 128
POINT = (70.0, 40.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")


def image() -> np.ndarray:
    ys, xs = np.mgrid[:H, :W]
    return np.dstack([xs * 2, ys * 2, ((xs // 16 + ys // 16) % 2) * 255]).astype(np.uint8)


def test_load_failures_name_the_reason(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="no checkpoint given"):
        load_predictor(NodeParams())
    with pytest.raises(BackendError, match=r"backend 'tensorrt' \(fp16\) cannot run on cpu: .*torch_tensorrt"):
        load_predictor(NodeParams(checkpoint=str(checkpoint), device="cpu", backend="tensorrt", precision="fp16"))
    with pytest.raises(ValueError, match="cannot load '.*missing.pth'"):
        load_predictor(NodeParams(checkpoint=str(tmp_path / "missing.pth"), device="cpu"))
    # a size the model cannot run is a size problem, named with its parameter and the smallest usable value
    with pytest.raises(ValueError, match=r"short_side=48 is too small .* smallest usable value is 65 .*input_size"):
        load_predictor(NodeParams(checkpoint=str(checkpoint), device="cpu", input_size=48))


def test_prompt_through_the_node_pipeline_matches_the_python_api(checkpoint):
    params = NodeParams(checkpoint=str(checkpoint), device="cpu", input_size=H, min_region_area=0, score_threshold=-1.0)
    predictor, model_id = load_predictor(params)
    pipeline = ModelPipeline(params, "cpu")
    assert pipeline.labeller is None and not pipeline.semantics and re.fullmatch(r"\w+-[0-9a-f]{12}", model_id)
    types = message_types()
    core = Scheduler(params, predictor, types, pipeline, model_id=model_id, log=print)
    header = make_header(types, 5_000_000_123, "cam")
    depth = array_to_image(types, np.full((H, W), 1200, np.uint16), "16UC1", header)
    info = SimpleNamespace(k=[100.0, 0, W / 2, 0, 100.0, H / 2, 0, 0, 1], d=[], distortion_model="plumb_bob",
                           width=W, height=H)
    core.submit_frame(rgb_to_image(types, image(), header), depth, info)
    core.submit_prompt(PromptRequest(prompt_id=7, points=np.array([POINT])))
    (out,) = core.step()
    assert core.errors.counts == {}

    predictor.set_image(image())  # the Python API, on the same model
    pred = predictor.predict(points=np.array([POINT]))
    thresholds = PostprocessParams(iou_threshold=-1.0, hole_area=0, island_area=0, keep_best_when_none=False)
    expected = postprocess_prompt(pred.mask_logits[0], pred.iou_scores[0], thresholds, prompt_id=7, point=POINT)
    got = msg_to_segments(out.message)
    assert [s.level for s in got] == [s.level for s in expected]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.prompt_id == 7 and a.iou_score == pytest.approx(b.iou_score)
    assert [s.id for s in got] == list(range(len(got)))
    for seg in out.message.segments:  # flat depth 1.2 m in front of the camera
        assert seg.has_3d and seg.pose.position.z == pytest.approx(1.2, abs=0.01)
        assert seg.centroid.z == pytest.approx(1.2, abs=0.01) and seg.normal.z == pytest.approx(-1.0, abs=1e-3)
        assert seg.valid_depth_ratio == 1.0 and seg.point_count == seg.area


# --- semantics in the node: vocabulary at run time, text prompts (tiny random CLIP) -----------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    pytest.importorskip("transformers")
    from semsam_ros.semantics.testing import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def semantic_core(checkpoint, tiny_clip):
    """A core with semantics: (core, labeller); the tests share it (loading is the slow part)."""
    params = NodeParams(checkpoint=str(checkpoint), device="cpu", input_size=H, min_region_area=0, semantics=True,
                        clip_model=str(tiny_clip), vocabulary_parts=["knob"], points_per_side=4, auto_levels=[1, 6],
                        auto_iou_threshold=-100.0, stability_threshold=0.0, score_threshold=-1.0)
    predictor, model_id = load_predictor(params)
    pipeline = ModelPipeline(params, "cpu")
    return Scheduler(params, predictor, message_types(), pipeline, model_id=model_id, log=print), pipeline.labeller


def run(core, *prompts):
    types = core.processor.types
    core.submit_frame(rgb_to_image(types, image(), make_header(types, 1, "cam")))
    for prompt in prompts:
        core.submit_prompt(prompt)
    (out,) = core.step()
    return out


def test_vocabulary_from_parameters_and_at_run_time(semantic_core):
    from semsam_ros.semantics import default_vocabulary

    core, labeller = semantic_core
    shipped = default_vocabulary()
    assert labeller.vocabulary.parts == ("knob",) and labeller.vocabulary.objects == shipped.objects
    run(core, PromptRequest(prompt_id=1, points=np.array([POINT])))
    encoded = labeller.cache_info().prompts_encoded
    assert core.set_vocabulary([], ["handle", "lid"]) == (True, f"vocabulary changed: {len(shipped.objects)} "
                                                                "objects, 2 parts")
    out = run(core, PromptRequest(prompt_id=1, points=np.array([POINT])))
    parts = [s for s in out.segments if s.level >= 4]
    assert parts and all(s.label in ("handle", "lid", "unknown") for s in parts)
    assert {lb for s in parts for lb, _ in s.top_labels} <= {"handle", "lid"}
    assert labeller.cache_info().prompts_encoded > encoded  # new part names: their texts were encoded
    encoded = labeller.cache_info().prompts_encoded
    assert core.set_vocabulary([], ["handle", "lid"])[0] is False  # unchanged
    run(core, PromptRequest(prompt_id=1, points=np.array([POINT])))
    assert labeller.cache_info().prompts_encoded == encoded  # nothing re-encoded
    assert core.class_names() == ["unknown", *shipped.objects, "handle", "lid"]
    assert core.params.vocabulary_parts == ["handle", "lid"]


def test_bad_vocabulary_file_is_refused(semantic_core, tmp_path):
    import dataclasses

    core, labeller = semantic_core
    before = labeller.vocabulary
    (tmp_path / "bad.yaml").write_text("objects: [mug\n")
    for path in (tmp_path / "missing.yaml", tmp_path / "bad.yaml"):
        with pytest.raises(ValueError, match=re.escape(str(path))):
            core.update_params(dataclasses.replace(core.params, vocabulary=str(path)))
    assert labeller.vocabulary is before and core.params.vocabulary == ""


def test_text_prompt_with_a_point_keeps_its_best_mask(semantic_core):
    core, _ = semantic_core
    out = run(core, PromptRequest(prompt_id=2, points=np.array([POINT, (20.0, 70.0)]), text="handle"),
              PromptRequest(prompt_id=3, points=np.array([POINT]), levels=(1, 6)))
    text_masks = [s for s in out.segments if s.prompt_id == 2]
    assert 1 <= len(text_masks) <= 2  # the best mask of each point (text_top_k 1)
    assert all(s.mask[int(s.point[1]), int(s.point[0])] for s in text_masks)
    assert len({s.point for s in text_masks}) == len(text_masks)
    assert {s.level for s in out.segments if s.prompt_id == 3} <= {1, 6}
    assert [s.id for s in out.message.segments] == [s.id for s in out.segments]


def test_text_only_prompt_searches_the_automatic_masks(semantic_core):
    import dataclasses

    core, _ = semantic_core
    core.update_params(dataclasses.replace(core.params, text_top_k=2))
    try:
        out = run(core, PromptRequest(prompt_id=4, text="the lid of the mug"))
    finally:
        core.update_params(dataclasses.replace(core.params, text_top_k=1))
    assert core.errors.counts == {}
    assert 1 <= len(out.segments) <= 2 and all(s.prompt_id == 4 for s in out.segments)
    assert {s.level for s in out.segments} <= {1, 6}
