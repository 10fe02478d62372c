"""A small check with a real CLIP model, for users who have one on disk (skipped otherwise).

Get the default model into the local Hugging Face cache once (needs internet):

    hf download openai/clip-vit-base-patch32        # or: huggingface-cli download openai/clip-vit-base-patch32

or point SEMSAM_CLIP_MODEL at a folder holding a CLIP model saved with ``save_pretrained``. The test draws
flat coloured shapes, which CLIP names reliably, and checks objects, a part in its object's context, and
text selection under a point.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip(
    "transformers", reason="the region labeller needs transformers (pip install 'semsam_ros[semantics]')"
)

from huggingface_hub import try_to_load_from_cache  # noqa: E402

from semsam_ros.types import KIND_OBJECT, KIND_PART, make_segment  # noqa: E402
from semsam_ros.semantics import DEFAULT_MODEL, RegionLabeller, Vocabulary, annotate, select  # noqa: E402

MODEL = os.environ.get("SEMSAM_CLIP_MODEL", DEFAULT_MODEL)
CACHED = Path(MODEL).is_dir() or isinstance(try_to_load_from_cache(MODEL, "config.json"), str)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CACHED,
        reason=f"CLIP model {MODEL!r} is not on this machine: run `hf download {DEFAULT_MODEL}` "
        "or set SEMSAM_CLIP_MODEL to a local model folder",
    ),
]


def test_real_clip_names_shapes_and_parts():
    canvas = Image.new("RGB", (320, 240), (235, 235, 235))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((20, 40, 170, 190), fill=(20, 40, 220))  # blue square
    draw.ellipse((70, 90, 120, 140), fill=(220, 20, 20))  # red circle on it
    draw.polygon([(250, 60), (190, 190), (310, 190)], fill=(20, 180, 40))  # green triangle
    image = np.asarray(canvas)
    square = np.all(image == (20, 40, 220), axis=-1)
    dot = np.all(image == (220, 20, 20), axis=-1)
    triangle = np.all(image == (20, 180, 40), axis=-1)
    segments = [
        make_segment(square | dot, 3, 0.9),
        make_segment(triangle, 3, 0.9),
        make_segment(dot, 5, 0.9),
    ]
    vocabulary = Vocabulary(
        objects=["blue square", "green triangle", "red circle", "yellow star"],
        parts=["red circle", "yellow star", "black line"],
        object_templates=["a photo of a {object}."],
        part_templates=["a photo of a {part}."],
        part_in_object_templates=["a photo of the {part} on a {object}."],
    )
    labeller = RegionLabeller(MODEL, vocabulary=vocabulary, min_score=0.3)
    out, scores = annotate(image, segments, labeller)
    by_level = {(s.level, s.label): s for s in out}
    assert set(by_level) == {(3, "blue square"), (3, "green triangle"), (5, "red circle")}
    part = by_level[(5, "red circle")]
    assert part.kind == KIND_PART and by_level[(3, "blue square")].kind == KIND_OBJECT
    assert out[part.parent_id].label == "blue square"
    assert scores.object_logits.shape == (3, 4) and scores.part_logits.shape == (3, 3)
    picked = select(out, "red circle", labeller, point=(95.0, 115.0))
    assert picked[0].segment is part
