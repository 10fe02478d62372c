"""RegionLabeller with a tiny random CLIP model and a tiny tokenizer built here (no download)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip(
    "transformers", reason="the region labeller needs transformers (pip install 'semsam_ros[semantics]')"
)

from semsam_ros.types import KIND_OBJECT, KIND_PART, make_segment  # noqa: E402
from semsam_ros.semantics import (  # noqa: E402
    RegionLabeller,
    Vocabulary,
    annotate,
    build_hierarchy,
    crop_region,
    select,
)
from semsam_ros.semantics.testing import make_tiny_clip  # noqa: E402

VOCAB = Vocabulary(
    objects=["mug", "pot", "table"],
    parts=["handle", "lid"],
    object_templates=["a photo of a {object}.", "a {object}."],
    part_templates=["a photo of a {part}."],
    part_in_object_templates=["the {part} of a {object}."],
)
H, W = 48, 64


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture()
def labeller(clip_dir) -> RegionLabeller:
    return RegionLabeller(clip_dir, vocabulary=VOCAB, min_score=0.0, top_k=3)


def frame() -> tuple[np.ndarray, list]:
    """An image with a few coloured boxes, and nested masks: table > mug > handle, plus a lone lid."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    image[20:40, 5:25] = (200, 40, 40)
    image[5:15, 40:60] = (40, 40, 200)

    def box(x0, y0, x1, y1):
        m = np.zeros((H, W), bool)
        m[y0:y1, x0:x1] = True
        return m

    segments = [
        make_segment(box(0, 18, 64, 48), 1, 0.9),  # table
        make_segment(box(5, 20, 25, 40), 3, 0.9),  # mug
        make_segment(box(20, 25, 25, 35), 5, 0.9),  # handle, inside the mug
        make_segment(box(40, 5, 60, 15), 4, 0.9),  # lid, inside nothing
    ]
    return image, segments


def test_loads_from_a_local_folder_only(clip_dir, tmp_path):
    lab = RegionLabeller(clip_dir, vocabulary=VOCAB)
    assert lab.image_size == 32 and lab.dtype == torch.float32 and lab.model_id == str(clip_dir.resolve())
    with pytest.raises(FileNotFoundError, match="hf download no-such-org/no-such-clip"):
        RegionLabeller("no-such-org/no-such-clip", cache_dir=tmp_path)


def test_crop_region_suppresses_background():
    image = torch.zeros(3, 20, 20)
    image[0] = 1.0  # red everywhere
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    fill = torch.tensor([0.5, 0.25, 0.75])
    # margin 0.5: side 20 with the box centred, so no resampling at size 20
    crop = crop_region(image, mask, (5, 5, 15, 15), size=20, fill=fill, margin=0.5)
    assert torch.allclose(crop[:, 10, 10], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(crop[:, 0, 0], fill, atol=1e-5) and torch.allclose(crop[:, 19, 10], fill, atol=1e-5)
    kept = crop_region(image, mask, (5, 5, 15, 15), size=20, fill=fill, margin=0.5, context=1.0)
    assert torch.allclose(kept, image, atol=1e-5)
    # a box at the border: the part of the square outside the image is fill too
    corner = np.zeros((20, 20), bool)
    corner[:4, :4] = True
    crop = crop_region(image, corner, (0, 0, 4, 4), size=8, fill=fill, margin=0.5, context=1.0)
    assert torch.allclose(crop[:, 0, 0], fill, atol=1e-5) and torch.allclose(crop[:, 4, 4], image[:, 0, 0])


def test_decoupled_labels_follow_the_level(labeller):
    image, segments = frame()
    out, scores = annotate(image, segments, labeller)
    assert [s.level for s in out] == [1, 3, 4, 5]
    assert scores.object_logits.shape == (4, 3) and scores.part_logits.shape == (4, 2)
    assert scores.embeddings.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(scores.embeddings, axis=1), 1.0, rtol=1e-5)
    for i, s in enumerate(out):
        if s.level <= 3:
            names, logits = VOCAB.objects, scores.object_logits[i]
            assert s.kind == KIND_OBJECT and s.label in VOCAB.objects
        else:
            names, logits = VOCAB.parts, scores.part_logits[i]
            assert s.kind == KIND_PART and s.label in VOCAB.parts
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        assert s.label == names[int(np.argmax(logits))]
        assert s.label_score == pytest.approx(float(probs.max()), rel=1e-5)
        assert [n for n, _ in s.top_labels] == [names[j] for j in np.argsort(-logits)[:3]]
    # the paper's interface: scaled cosine similarity with the text embeddings
    text = labeller.object_text_embeddings().numpy()
    np.testing.assert_allclose(scores.object_logits, labeller.logit_scale * scores.embeddings @ text.T, atol=1e-4)


def test_parts_are_scored_in_their_parent_objects_context(labeller):
    image, segments = frame()
    out, scores = annotate(image, segments, labeller)
    table, mug, lid, handle = out
    assert handle.parent_id == mug.id and mug.parent_id == table.id and lid.parent_id == -1
    in_mug = labeller.part_text_embeddings(mug.label).numpy()
    alone = labeller.part_text_embeddings(None).numpy()
    assert not np.allclose(in_mug, alone)
    s = labeller.logit_scale
    np.testing.assert_allclose(scores.part_logits[3], s * scores.embeddings[3] @ in_mug.T, atol=1e-4)
    np.testing.assert_allclose(scores.part_logits[2], s * scores.embeddings[2] @ alone.T, atol=1e-4)
    # an unknown parent gives no context
    labeller.min_score = 1.01
    out, scores = annotate(image, segments, labeller)
    assert out[1].label == "unknown"
    np.testing.assert_allclose(scores.part_logits[3], s * scores.embeddings[3] @ alone.T, atol=1e-4)


def test_below_threshold_is_unknown_never_forced(labeller):
    image, segments = frame()
    _, scores = annotate(image, segments, labeller)
    best = sorted(s.label_score for s in segments)
    labeller.min_score = (best[1] + best[2]) / 2
    out, _ = annotate(image, segments, labeller)
    known = [s for s in out if s.label != "unknown"]
    unknown = [s for s in out if s.label == "unknown"]
    assert len(known) == 2 and len(unknown) == 2
    assert all(s.label_score >= labeller.min_score for s in known)
    for s in unknown:
        assert s.label_score < labeller.min_score and s.label_score == s.top_labels[0][1]
        assert s.kind == (KIND_OBJECT if s.level <= 3 else KIND_PART)  # the kind follows the level
        assert s.top_labels[0][0] != "unknown"


def test_empty_mask_is_unknown_with_zero_embedding(labeller):
    image, segments = frame()
    empty = make_segment(np.zeros((H, W), bool), 5, 0.1)
    scores = labeller.label(image, [*segments, empty])
    assert empty.label == "unknown" and empty.label_score == 0.0 and empty.top_labels == []
    assert empty.kind == KIND_PART
    assert not scores.embeddings[-1].any() and not scores.object_logits[-1].any()


def test_text_embeddings_are_computed_once_per_vocabulary(labeller):
    image, segments = frame()
    build_hierarchy(segments)
    assert labeller.cache_info().prompts_encoded == 0
    labeller.label(image, segments)
    table, mug = segments[0], segments[1]
    contexts = {None, table.label, mug.label}  # table: none; mug: the table; handle: the mug; lid: none
    first = 3 * 2 + 2 * len(contexts)
    info = labeller.cache_info()
    assert info.prompts_encoded == first and info.misses == 1 + len(contexts)
    labeller.label(image, segments)
    assert labeller.cache_info().prompts_encoded == first
    assert labeller.cache_info().hits == info.hits + 1 + len(contexts)

    same = Vocabulary.from_dict(VOCAB.to_dict())
    assert labeller.set_vocabulary(same) is False
    labeller.label(image, segments)
    assert labeller.cache_info().prompts_encoded == first

    new_parts = Vocabulary.from_dict({"parts": ["handle", "lid", "knob"]}, base=VOCAB)
    assert labeller.set_vocabulary(new_parts) is True
    labeller.label(image, segments)
    assert labeller.cache_info().prompts_encoded == first + 3 * len(contexts)  # objects reused
    assert all(s.label in new_parts.parts for s in segments if s.level >= 4)

    before = labeller.cache_info().prompts_encoded
    labeller.set_vocabulary(VOCAB)  # back to an earlier vocabulary: still cached
    labeller.label(image, segments)
    assert labeller.cache_info().prompts_encoded == before


def test_batching_equals_one_by_one(clip_dir):
    image, segments = frame()
    build_hierarchy(segments)
    batched = RegionLabeller(clip_dir, vocabulary=VOCAB, min_score=0.0, batch_size=8).label(image, segments)
    labels = [(s.label, s.label_score) for s in segments]
    single = RegionLabeller(clip_dir, vocabulary=VOCAB, min_score=0.0, batch_size=1).label(image, segments)
    np.testing.assert_allclose(batched.embeddings, single.embeddings, atol=1e-5)
    np.testing.assert_allclose(batched.object_logits, single.object_logits, atol=1e-4)
    np.testing.assert_allclose(batched.part_logits, single.part_logits, atol=1e-4)
    assert [s.label for s in segments] == [label for label, _ in labels]
    fresh = RegionLabeller(clip_dir, vocabulary=VOCAB)
    one_at_a_time = np.concatenate([fresh.encode_regions(image, [s]) for s in segments])
    np.testing.assert_allclose(one_at_a_time, batched.embeddings, atol=1e-5)


def test_region_embeddings_are_reused_by_select(labeller):
    image, segments = frame()
    out, scores = annotate(image, segments, labeller)
    np.testing.assert_array_equal(labeller.region_embeddings(out), scores.embeddings)
    stranger = make_segment(segments[1].mask.copy(), 3, 0.5)
    with pytest.raises(ValueError, match="pass the frame's image"):
        labeller.region_embeddings([stranger])
    again = labeller.region_embeddings([stranger], image=image)[0]
    np.testing.assert_allclose(again, scores.embeddings[1], atol=1e-6)

    handle = out[3]
    query = labeller.query_embeddings(["mug handle"])[0]
    picked = select(out, "mug handle", labeller)
    assert len(picked) == 4  # with a labeller every mask is ranked
    for p in picked:
        row = next(i for i, s in enumerate(out) if s is p.segment)
        assert p.similarity == pytest.approx(float(scores.embeddings[row] @ query), abs=1e-5)
        assert p.score == pytest.approx(p.similarity + 0.1 * p.match, abs=1e-6)
    assert [p.score for p in picked] == sorted((p.score for p in picked), reverse=True)
    # a forced label makes the plumbing visible: the handle under the point is the mug's handle
    handle.label, out[1].label = "handle", "mug"
    on_handle = select(out, "mug handle", labeller, point=(22.0, 30.0))
    assert on_handle[0].segment is handle and on_handle[0].match == pytest.approx(1.0)
    assert {p.segment.level for p in on_handle} == {1, 3, 5}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_on_cuda_matches_fp32(clip_dir):
    image, segments = frame()
    build_hierarchy(segments)
    cpu = RegionLabeller(clip_dir, vocabulary=VOCAB).encode_regions(image, segments)
    gpu_labeller = RegionLabeller(clip_dir, vocabulary=VOCAB, device="cuda")
    assert gpu_labeller.dtype == torch.float16
    np.testing.assert_allclose(gpu_labeller.encode_regions(image, segments), cpu, atol=2e-2)
