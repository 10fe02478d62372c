"""Semantics without a model: vocabularies, part-of hierarchy, query parsing and label-based selection."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semsam_ros.types import make_segment
from semsam_ros.semantics import (
    Vocabulary,
    ancestors,
    build_hierarchy,
    default_vocabulary,
    default_vocabulary_path,
    parse_query,
    select,
)

REPO = Path(__file__).resolve().parents[1]


def box_mask(x0: int, y0: int, x1: int, y1: int, shape: tuple[int, int] = (40, 60)) -> np.ndarray:
    """Bool mask with the pixel box [x0, x1) x [y0, y1) set."""
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# vocabularies


def test_default_vocabulary_is_the_shipped_file():
    assert default_vocabulary_path() == REPO / "config" / "vocabulary.yaml"
    v = default_vocabulary()
    required = "handle lid knob button door drawer wheel leg seat cap blade screen key spout".split()
    assert set(required) <= set(v.parts)
    assert {"mug", "bottle", "chair", "door", "drawer"} & set(v.objects) == {"mug", "bottle", "chair", "door"}
    assert len(v.objects) >= 100 and len(v.objects) == len(set(v.objects))
    assert all("{object}" in t for t in v.object_templates)
    assert all("{part}" in t and "{object}" in t for t in v.part_in_object_templates)


def test_vocabulary_cleans_and_validates():
    v = Vocabulary(objects=["  mug ", "coffee   mug", "mug"], parts=["handle"])
    assert v.objects == ("mug", "coffee mug")
    with pytest.raises(ValueError, match="empty"):
        Vocabulary(objects=[], parts=["handle"])
    with pytest.raises(ValueError, match="empty name"):
        Vocabulary(objects=["mug", " "], parts=["handle"])
    with pytest.raises(TypeError, match="list of strings"):
        Vocabulary(objects="mug", parts=["handle"])
    with pytest.raises(ValueError, match=r"lacks \{object\}"):
        Vocabulary(objects=["mug"], parts=["handle"], part_in_object_templates=["the {part}"])


def test_vocabulary_digest_follows_content():
    a = Vocabulary(objects=["mug", "pot"], parts=["handle"])
    assert Vocabulary(objects=["mug", "pot "], parts=["handle"]).digest == a.digest
    assert Vocabulary(objects=["pot", "mug"], parts=["handle"]).digest != a.digest
    assert Vocabulary(objects=["mug", "pot"], parts=["lid"]).digest != a.digest
    other_template = Vocabulary(objects=["mug", "pot"], parts=["handle"], object_templates=["a {object}"])
    assert other_template.digest != a.digest


def test_vocabulary_from_dict_and_yaml(tmp_path):
    base = Vocabulary(objects=["mug"], parts=["handle"], object_templates=["a {object}"])
    only_parts = Vocabulary.from_dict({"parts": ["lid", "knob"], "objects": []}, base=base)
    assert only_parts.objects == ("mug",) and only_parts.parts == ("lid", "knob")
    assert only_parts.object_templates == ("a {object}",)
    assert Vocabulary.from_dict({"parts": ["lid"]}).objects == default_vocabulary().objects
    with pytest.raises(ValueError, match="unknown vocabulary keys"):
        Vocabulary.from_dict({"things": ["x"]})
    path = tmp_path / "v.yaml"
    only_parts.to_yaml(path)
    assert Vocabulary.from_yaml(path) == only_parts
    partial = tmp_path / "p.yaml"
    partial.write_text("objects: [kettle, toaster]\n")
    v = Vocabulary.from_yaml(partial, base=base)
    assert v.objects == ("kettle", "toaster") and v.parts == ("handle",)


def test_semantics_imports_without_transformers():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import semsam_ros.semantics as s\n"
        "try:\n    s.RegionLabeller('x')\n"
        "except ImportError as e:\n    print('ERR', e)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "ERR RegionLabeller needs Hugging Face transformers" in out.stdout
    assert "semsam_ros[semantics]" in out.stdout


# hierarchy: a table (level 1) holding a mug and a pot (level 3); the mug's handle (level 5) and body (level 4);
# the pot's lid (level 4) with a knob (level 6); a second prompt's level-2 mask around the mug; a crumb half
# inside the table; an empty mask.


def scene() -> dict[str, object]:
    masks = {
        "table": (box_mask(0, 10, 60, 40), 1),
        "mug_area": (box_mask(2, 12, 30, 38), 2),
        "mug": (box_mask(5, 15, 25, 35), 3),
        "pot": (box_mask(35, 15, 55, 35), 3),
        "body": (box_mask(5, 15, 20, 35), 4),
        "handle": (box_mask(20, 20, 25, 30), 5),
        "lid": (box_mask(35, 15, 55, 20), 4),
        "knob": (box_mask(43, 15, 47, 18), 6),
        "crumb": (box_mask(22, 5, 28, 15), 5),  # 60 px: 30 inside the table, 18 inside mug_area
        "empty": (np.zeros((40, 60), bool), 4),
    }
    return {name: make_segment(m, level, 0.9, prompt_id=i) for i, (name, (m, level)) in enumerate(masks.items())}


def test_hierarchy_links_parts_to_smallest_coarser_container():
    seg = scene()
    out = build_hierarchy(list(seg.values()))
    assert [s.id for s in out] == list(range(len(out)))
    name = {id(s): n for n, s in seg.items()}
    parent = {name[id(s)]: (name[id(out[s.parent_id])] if s.parent_id >= 0 else None) for s in out}
    assert parent == {
        "table": None,
        "mug_area": "table",
        "mug": "mug_area",  # between prompts: the level-2 mask of another prompt is the smallest container
        "pot": "table",
        "body": "mug",
        "handle": "mug",  # the body (level 4) is coarser but does not hold the handle
        "lid": "pot",
        "knob": "lid",
        "crumb": None,  # only half inside the table
        "empty": None,
    }
    for s in out:
        assert s.child_ids == sorted(c.id for c in out if c.parent_id == s.id)
    assert [name[id(a)] for a in ancestors(seg["knob"], {s.id: s for s in out})] == ["lid", "pot", "table"]


def test_hierarchy_ids_are_canonical_whatever_the_input_order():
    seg = scene()
    build_hierarchy(seg.values())
    first = {n: (s.id, s.parent_id, list(s.child_ids)) for n, s in seg.items()}
    names = list(seg)
    rng = np.random.default_rng(1)
    for _ in range(3):
        shuffled = [seg[n] for n in rng.permutation(names)]
        build_hierarchy(shuffled)
        assert {n: (s.id, s.parent_id, list(s.child_ids)) for n, s in seg.items()} == first
    # canonical order: coarse to fine, then large to small
    out = build_hierarchy(seg.values())
    assert [s.level for s in out] == sorted(s.level for s in out)
    assert out[0] is seg["table"] and out[1] is seg["mug_area"] and out[2] is seg["mug"]


def test_hierarchy_given_order_and_containment_parameter():
    seg = scene()
    given = list(seg.values())
    out = build_hierarchy(given, order="given")
    assert all(a is b for a, b in zip(out, given)) and [s.id for s in out] == list(range(len(given)))
    assert seg["crumb"].parent_id == -1
    build_hierarchy(given, min_inside=0.5)
    assert seg["crumb"].parent_id == seg["table"].id  # 50% inside the table
    with pytest.raises(ValueError, match="min_inside"):
        build_hierarchy(given, min_inside=0.0)
    with pytest.raises(ValueError, match="one shape"):
        build_hierarchy([seg["mug"], make_segment(np.ones((4, 4), bool), 4, 0.5)])


def test_nested_masks_of_one_level_are_siblings():
    drawer = make_segment(box_mask(0, 0, 30, 30), 4, 0.9, prompt_id=0)
    knob = make_segment(box_mask(5, 5, 10, 10), 4, 0.9, prompt_id=1)  # inside the drawer, same level
    twin = make_segment(box_mask(5, 5, 10, 10), 4, 0.8, prompt_id=2)
    cabinet = make_segment(box_mask(0, 0, 40, 40), 3, 0.9, prompt_id=3)
    out = build_hierarchy([knob, twin, drawer, cabinet])
    assert out[0] is cabinet
    assert [s.parent_id for s in (drawer, knob, twin)] == [cabinet.id] * 3  # siblings under the coarser level
    assert drawer.child_ids == [] and sorted(cabinet.child_ids) == sorted(s.id for s in (drawer, knob, twin))
    alone = build_hierarchy([make_segment(box_mask(5, 5, 10, 10), 6, 0.9), make_segment(box_mask(0, 0, 30, 30), 6,
                                                                                         0.9)])
    assert [s.parent_id for s in alone] == [-1, -1]


@pytest.mark.parametrize("inside, linked", [(27, True), (26, False)])
def test_containment_edge_is_inclusive(inside, linked):
    """A 30-pixel child with exactly 90 % (27 px) inside its coarser container is linked; 26 px is not."""
    child = np.zeros((10, 40), bool)
    child[0, :30] = True
    parent = np.zeros((10, 40), bool)
    parent[0, 30 - inside:30] = True
    parent[1:, :] = True  # a larger container that is no bigger around the child
    out = build_hierarchy([make_segment(child, 5, 0.9, prompt_id=0), make_segment(parent, 3, 0.9, prompt_id=1)])
    assert (out[1].parent_id == out[0].id) is linked
    shifted = build_hierarchy([make_segment(child, 5, 0.9), make_segment(parent, 5, 0.9)])  # one level: no link
    assert [s.parent_id for s in shifted] == [-1, -1]


def test_masks_of_several_prompts_link_across_levels_only():
    """Three clicks each answered at levels 3, 4, 5 on a mug: links go from each level to the next coarser one
    present, whichever prompt made the mask, never within a level."""
    mug, body, handle = box_mask(0, 0, 30, 30), box_mask(0, 0, 20, 30), box_mask(22, 10, 28, 20)
    segs = [make_segment(mug, 3, 0.9, prompt_id=0), make_segment(body, 4, 0.9, prompt_id=1),
            make_segment(handle, 5, 0.9, prompt_id=2), make_segment(mug, 3, 0.8, prompt_id=1),
            make_segment(handle, 4, 0.7, prompt_id=2)]
    out = build_hierarchy(segs)
    by_level = {s.level: [] for s in out}
    for s in out:
        by_level[s.level].append(s)
    for s in out:
        if s.parent_id >= 0:
            assert out[s.parent_id].level < s.level
    assert all(s.parent_id == -1 for s in by_level[3])
    assert segs[4].parent_id == segs[0].id == 0  # level-4 handle in the level-3 mug (lower id of the twins)
    assert segs[2].parent_id == segs[4].id  # level-5 handle: smallest strictly coarser container
    assert segs[1].parent_id == 0


# text selection by labels


def labelled_scene() -> dict[str, object]:
    seg = scene()
    for n, label in [("table", "table"), ("mug_area", "unknown"), ("mug", "mug"), ("pot", "pot"),
                     ("body", "body"), ("handle", "handle"), ("lid", "lid"), ("knob", "knob"),
                     ("crumb", "unknown"), ("empty", "unknown")]:
        seg[n].label = label
    build_hierarchy(seg.values())
    return seg


def test_parse_query():
    names = ["handle", "mug", "cutting board", "chest of drawers"]
    assert parse_query("handle") == (("handle",), ())
    assert parse_query("The lid") == (("lid",), ())
    assert parse_query("mug handle", names) == (("handle",), ("mug",))
    assert parse_query("the handle of the mug") == (("handle",), ("mug",))
    assert parse_query("the mug's handle") == (("handle",), ("mug",))
    assert parse_query("cutting board", names) == (("cutting", "board"), ())
    assert parse_query("chest of drawers", names) == (("chest", "of", "drawers"), ())
    assert parse_query("big red mug", names) == (("mug",), ("big", "red"))
    with pytest.raises(ValueError, match="empty query"):
        parse_query("the")


def test_select_by_label_match():
    seg = labelled_scene()
    frame = build_hierarchy(seg.values())
    # a second handle, on the pot: "mug handle" must prefer the mug's
    pot_handle = make_segment(box_mask(55, 22, 58, 28), 5, 0.9)
    pot_handle.label = "handle"
    frame = build_hierarchy([*frame, pot_handle])
    assert pot_handle.parent_id == seg["table"].id  # the pot box ends at x=55

    picked = select(frame, "handle")
    assert {p.segment.label for p in picked} == {"handle"} and len(picked) == 2
    assert all(p.match == 1.0 and p.score == pytest.approx(0.1) and p.similarity == 0.0 for p in picked)

    picked = select(frame, "mug handle")
    assert picked[0].segment is seg["handle"] and picked[0].match == pytest.approx(1.0)
    assert picked[1].segment is pot_handle and picked[1].match == pytest.approx(2 / 3)
    # the body is inside the mug but is not a handle: context only
    assert [p.segment for p in picked[2:]] == [seg["body"]] and picked[2].match == pytest.approx(1 / 3)

    assert [p.segment for p in select(frame, "the lid of the pot")][:1] == [seg["lid"]]
    assert select(frame, "toaster") == []
    assert len(select(frame, "handle", top_k=1)) == 1


def test_select_with_a_point_keeps_masks_under_it():
    frame = build_hierarchy(labelled_scene().values())
    on_handle = (22.5, 25.0)
    picked = select(frame, "handle", point=on_handle)
    assert [p.segment.label for p in picked] == ["handle"]
    assert picked[0].segment.mask[25, 22]
    assert [p.segment.label for p in select(frame, "mug", point=on_handle)] == ["mug"]
    assert select(frame, "lid", point=on_handle) == []
    assert select(frame, "handle", point=(500.0, 5.0)) == []
