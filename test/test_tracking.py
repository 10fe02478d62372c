"""The tracker on rendered sequences with an oracle predictor (ids, lost and re-found, crossings, camera jumps with
depth and poses, parts next to their parent), and its mechanics with the real tiny model."""
from __future__ import annotations

import numpy as np
import pytest

from semsam_ros.tracking import MotionEstimator, Tracker
from semsam_ros.types import TRACK_LOST, TRACK_TRACKING
from tracking_scenes import PART, Oracle, Painter, camera_sequence, disc, iou, rect, texture

H, W = 120, 160
FPS = 10.0


def run(tracker: Tracker, oracle: Oracle, frames, **per_frame) -> list[dict[int, np.ndarray]]:
    """Step through ``frames``; per frame, track id -> its mask."""
    out = []
    for i, frame in enumerate(frames):
        oracle.show(frame)
        extra = {k: v[i] for k, v in per_frame.items()}
        segs = tracker.step(frame.rgb, stamp_s=i / FPS, **extra)
        assert len({s.track_id for s in segs}) == len(segs)
        out.append({s.track_id: s.mask for s in segs})
    return out


def test_motion_estimator_recovers_a_camera_jerk():
    canvas = texture(300, 400)
    motion = MotionEstimator()
    motion.update(canvas[50:50 + H, 100:100 + W])
    dx, dy = motion.update(canvas[43:43 + H, 130:130 + W])  # the view moved right 30 and up 7: content left, down
    assert (dx, dy) == pytest.approx((-30, 7), abs=1.0)


def test_disc_and_ring_keep_their_ids_through_translation_and_a_jump():
    canvas = texture(300, 400)
    frames, truth = [], []
    for f in range(30):
        ox = 100 + 2 * f + (40 if f >= 15 else 0)  # the camera pans, then jerks by 40 px
        paint = Painter(canvas[60:60 + H, ox:ox + W])
        d = disc((H, W), 60 + 2 * f - (ox - 100), 50, 14)
        r = disc((H, W), 110 + f - (ox - 100), 70 + f * 0.5, 18, 9)
        paint.paint(1, d, (250, 30, 30)).paint(2, r, (30, 250, 30))
        frames.append(paint.frame())
        truth.append({1: paint.labels[0] == 1, 2: paint.labels[0] == 2})  # what is visible of each
    tracker = Tracker(Oracle())
    oracle = tracker.predictor
    a = tracker.add(point=(60, 50), levels=[3])
    b = tracker.add(point=(110 - 18 + 4, 70), levels=[3])  # on the ring's band, left of its hole
    got = run(tracker, oracle, frames)
    for f, masks in enumerate(got):
        assert set(masks) == {a, b}, f"frame {f}"
        assert iou(masks[a], truth[f][1]) > 0.95 and iou(masks[b], truth[f][2]) > 0.95, f"frame {f}"
    assert oracle.calls == len(frames)  # every track decoded in one call per frame


def occluded_sequence():
    """A disc moving right at 2 px/frame passes behind a static box: fully hidden for 14 frames."""
    background = texture(H, W, seed=1)
    frames, truth = [], []
    for f in range(61):
        d = disc((H, W), 20 + 2 * f, 60, 12)
        paint = Painter(background).paint(1, d, (240, 40, 40)).paint(2, rect((H, W), 60, 30, 110, 90), (40, 40, 240))
        frames.append(paint.frame())
        truth.append(paint.labels[0] == 1)
    return frames, truth


def test_an_object_hidden_for_ten_frames_is_refound_with_its_id():
    frames, truth = occluded_sequence()
    tracker = Tracker(Oracle(), lost_after=3, forget_s=5.0)
    a = tracker.add(point=(20, 60), levels=[1])
    got, states = [], []
    for f, frame in enumerate(frames):
        tracker.predictor.show(frame)
        segs = tracker.step(frame.rgb, stamp_s=f / FPS)
        got.append({s.track_id: s.mask for s in segs})
        states.append(tracker.tracks[a].state)
    hidden = [f for f, t in enumerate(truth) if not t.any()]
    assert len(hidden) >= 10
    for f in hidden:
        assert a not in got[f], f"frame {f}: the hidden object's track took another mask"
    assert states[hidden[-1]] == TRACK_LOST
    whole = [f for f, t in enumerate(truth) if f > hidden[-1] and t.sum() == truth[0].sum()]
    assert whole, "the sequence ends with the object fully visible"
    for f in whole:
        assert iou(got[f][a], truth[f]) > 0.95, f"frame {f}"
    assert states[-1] == TRACK_TRACKING and tracker._next_id == 1  # re-found, no new id


def test_two_identical_objects_crossing_never_swap_ids():
    background = texture(H, W, seed=2)
    frames, truth = [], []
    for f in range(40):
        a_mask, b_mask = disc((H, W), 20 + 3 * f, 55, 12), disc((H, W), 140 - 3 * f, 65, 12)
        paint = Painter(background).paint(2, b_mask, (200, 200, 40)).paint(1, a_mask, (200, 200, 40))  # a in front
        frames.append(paint.frame())
        truth.append((paint.labels[0] == 1, paint.labels[0] == 2))
    tracker = Tracker(Oracle())
    a, b = tracker.add(point=(20, 55), levels=[3]), tracker.add(point=(140, 65), levels=[3])
    got = run(tracker, tracker.predictor, frames)
    for f, masks in enumerate(got):
        for tid, (mine, other) in ((a, truth[f]), (b, truth[f][::-1])):
            if tid in masks:
                assert iou(masks[tid], mine) > iou(masks[tid], other), f"frame {f}: track {tid} took the other"
    assert set(got[-1]) == {a, b} and sum(a in g for g in got) == len(frames)


def test_anchor_reprojection_keeps_a_track_through_a_100_px_camera_jump_that_2d_loses():
    frames, poses, truth, camera = camera_sequence()
    centre = np.argwhere(truth[0]).mean(axis=0)[::-1]
    jump = np.argwhere(truth[10]).mean(axis=0)[1] - np.argwhere(truth[9]).mean(axis=0)[1]
    assert jump == pytest.approx(-103, abs=1)  # 100 px jump + 3 px of steady motion

    with_3d = Tracker(Oracle())
    a = with_3d.add(point=centre, levels=[3])
    got = run(with_3d, with_3d.predictor, frames, depth_m=[f.depth for f in frames], camera=[camera] * len(frames),
              pose=poses)
    assert all(iou(g[a], t) > 0.95 for g, t in zip(got, truth))

    flat = Tracker(Oracle())
    b = flat.add(point=centre, levels=[3])
    got = run(flat, flat.predictor, frames)
    assert all(iou(g[b], t) > 0.95 for g, t in zip(got[:10], truth))
    assert not any(b in g and iou(g[b], t) > 0.5 for g, t in zip(got[10:], truth[10:]))


def test_a_part_at_a_fine_level_next_to_its_parent_at_a_coarse_level():
    canvas = texture(300, 400, seed=4)
    frames, parents, parts = [], [], []
    for f in range(25):
        ox = 100 + 3 * f
        body = rect((H, W), 50 - 3 * f + 20, 40, 90 - 3 * f + 20, 90)
        handle = rect((H, W), 90 - 3 * f + 20, 55, 100 - 3 * f + 20, 75)
        paint = Painter(canvas[60:60 + H, ox:ox + W]).paint(1, body | handle, (180, 120, 60),
                                                             parts=[(5, handle, (90, 60, 30)), (6, body, (180, 120, 60))])
        frames.append(paint.frame())
        parents.append(body | handle)
        parts.append(paint.labels[PART] == 5)
    tracker = Tracker(Oracle())
    part = tracker.add(point=(114, 65), levels=[4, 5, 6])
    whole = tracker.add(point=(90, 65), levels=[1])
    got = run(tracker, tracker.predictor, frames)
    for f, masks in enumerate(got):
        assert iou(masks[part], parts[f]) > 0.95 and iou(masks[whole], parents[f]) > 0.95, f"frame {f}"
    assert tracker.tracks[part].level in (4, 5, 6) and tracker.tracks[whole].level == 1


def test_ids_are_never_reused_tracks_are_bounded_and_lost_ones_end():
    frames, _ = occluded_sequence()
    tracker = Tracker(Oracle(), max_tracks=2, lost_after=2, forget_s=0.5)
    first = tracker.add(point=(20, 60))
    tracker.add(point=(5, 5))
    with pytest.raises(ValueError, match="max_tracks"):
        tracker.add(point=(6, 6))
    assert tracker.remove([first]) == [first]
    third = tracker.add(box=(70, 40, 100, 80), levels=[3])
    assert third == 2 and set(tracker.tracks) == {1, third}
    tracker.predictor.show(frames[0])
    tracker.step(frames[0].rgb, stamp_s=0.0)
    tracker.remove()
    gone = tracker.add(point=(20, 60), levels=[1])  # the disc on frame 0, then never again where it was
    tracker.predictor.show(frames[0])
    assert [s.track_id for s in tracker.step(frames[0].rgb, stamp_s=1.0)] == [gone]
    states = []
    for f in range(1, 9):
        tracker.predictor.show(frames[32])  # the disc is behind the box
        assert tracker.step(frames[32].rgb, stamp_s=1.0 + f / FPS) == []
        states.append(tracker.tracks[gone].state if gone in tracker.tracks else "ended")
    assert states == [TRACK_TRACKING] + [TRACK_LOST] * 4 + ["ended"] * 3  # lost after 2 misses, ended 0.5 s after
    assert tracker.counts() == {"tracking": 0, "lost": 0, "ended": 4} and tracker.add(point=(5, 5)) == 4


def test_real_tiny_model_keeps_ids_on_a_static_scene_for_100_frames():
    torch = pytest.importorskip("torch")
    from semsam_ros.inference.predictor import Predictor
    from semsam_ros.testing import random_model

    torch.set_num_threads(1)
    predictor = Predictor(random_model(), device="cpu", short_side=96)
    calls = []
    predict = predictor.predict
    predictor.predict = lambda *a, **k: calls.append(1) or predict(*a, **k)
    image = texture(96, 128, seed=5)
    tracker = Tracker(predictor)
    ids = [tracker.add(point=(x, y)) for x, y in ((20, 20), (64, 48), (100, 70), (40, 80))]
    for f in range(5):  # a new track whose mask another one took keeps looking at its origin: let them settle
        first = {s.track_id: s for s in tracker.step(image, stamp_s=f / FPS)}
    assert first, "the tiny model gave no mask at all"
    for f in range(5, 105):
        segs = {s.track_id: s for s in tracker.step(image, stamp_s=f / FPS)}
        assert set(segs) == set(first), f"frame {f}"
        assert all(tracker.tracks[i].state == TRACK_TRACKING for i in segs)
    assert len(calls) == 105 and set(tracker.tracks) <= set(ids) and tracker._next_id == len(ids)
