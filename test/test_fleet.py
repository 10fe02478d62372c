"""`semsam fleet` on a local Ray instance (2 CPUs): every output equal to `semsam bag`'s, slices, failures, resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rosbags")
ray = pytest.importorskip("ray", reason="semsam fleet needs Ray: pip install -e '.[fleet]'")
pq = pytest.importorskip("pyarrow.parquet", reason="semsam fleet needs pyarrow: pip install -e '.[fleet]'")

from semsam_ros.cli import main  # noqa: E402
from semsam_ros.inference.postprocess import rle_to_mask  # noqa: E402
from semsam_ros.ros.convert import msg_to_segments, stamp_to_ns  # noqa: E402
from test_bag import (  # noqa: E402
    CAM, COMPRESSED, IMAGE, REPO, SCORE_THRESHOLD, SEC, STORE, T0, TIMINGS, TYPES, compressed, encoded,
    one_torch_thread, read_bag, write_bag,
)

assert one_torch_thread  # autouse here too: the reference `semsam bag` runs on one thread, as each worker does
SEGMENTS = f"{CAM}/segments"
PROMPTS = f"{CAM}:\n  - points: [[30, 22]]\n    levels: [1, 3]\n"


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Any:
    """One local Ray instance with 2 CPUs for the module (the fleet runs join it, as a user's script would); its
    workers import this checkout, as those of the instance ``semsam fleet`` starts do."""
    from semsam_ros.fleet.runner import _import_path_for_workers

    path = os.environ.get("PYTHONPATH")
    _import_path_for_workers()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()
    os.environ.pop("PYTHONPATH") if path is None else os.environ.update(PYTHONPATH=path)


def chatter(k: int) -> tuple[str, str, int, Any]:
    return ("/chatter", "std_msgs/msg/String", T0 + k * SEC // 10 + 7, TYPES.make("std_msgs/msg/String", data=f"{k}"))


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four small bags: raw rgb8 (sqlite3), bgr8 (mcap), png (CompressedImage) and mono8, 3 frames each."""
    root = tmp_path_factory.mktemp("bags")
    made = []
    for n, (storage, kind) in enumerate([("sqlite3", "rgb8"), ("mcap", "bgr8"), ("sqlite3", "png"),
                                         ("mcap", "mono8")]):
        messages = [chatter(0)]
        for k in range(3):
            frame = compressed(k + n, "png") if kind == "png" else encoded(k + n, kind)
            messages.append((CAM, COMPRESSED if kind == "png" else IMAGE, T0 + k * SEC // 10 + 5, frame))
        made.append(write_bag(root / f"rec{n}", storage, messages))
    return made


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.yaml"
    path.write_text(PROMPTS)
    return path


def options(prompts: Path, checkpoint: Path, *extra: object) -> list[str]:
    return [str(a) for a in ("--image-topic", CAM, "--prompts", prompts, "--checkpoint", checkpoint, "--input-size",
                             96, "--set", f"score_threshold={SCORE_THRESHOLD}", "-q", *extra)]


def semsam(*argv: object) -> int:
    return main([str(a) for a in argv])


def reference(src: Path, out: Path, argv: list[str]) -> Path:
    assert semsam("bag", src, "--out", out, *argv) == 0
    return out


def messages(bag: Path) -> dict[str, list[tuple[int, bytes]]]:
    """topic -> [(bag time, raw)], the SegmentArray's wall-clock timings zeroed."""
    out = {}
    for topic, items in read_bag(bag).items():
        if topic == SEGMENTS:
            for _, msg, _ in items:
                for name in TIMINGS:
                    setattr(msg, name, 0.0)
            items = [(t, msg, STORE.serialize_cdr(msg, "semsam_ros/msg/SegmentArray")) for t, msg, _ in items]
        out[topic] = [(t, raw) for t, _, raw in items]
    return out


def assert_same_bag(got: Path, want: Path) -> None:
    """The same messages byte for byte (but the timings), topics, types and file names."""
    from rosbags.rosbag2 import Reader

    assert sorted(p.name for p in got.iterdir()) == sorted(p.name.replace(want.name, got.name)
                                                           for p in want.iterdir())
    with Reader(got) as a, Reader(want) as b:
        assert [(c.topic, c.msgtype, c.msgcount) for c in a.connections] == [
            (c.topic, c.msgtype, c.msgcount) for c in b.connections]
    assert messages(got) == messages(want)


def test_long_bag_in_slices_equals_the_unsplit_run(prompts, tiny_checkpoint, tmp_path, capsys):
    """14 frames in 1.4 s, every 2nd from 0.15 s on, in slices of 0.3 s over 2 workers: the unsplit run's bag."""
    kinds = ["rgb8", "bgr8"]
    messages_ = [chatter(k) for k in range(14)] + [
        (CAM, IMAGE, T0 + k * SEC // 10 + 5, encoded(k % 5, kinds[k % 2])) for k in range(14)]
    src = write_bag(tmp_path / "long", "mcap", messages_)
    argv = options(prompts, tiny_checkpoint, "--every", 2, "--start", 0.15)
    out = tmp_path / "fleet"
    assert semsam("fleet", src, "--out", out, "--slice-seconds", 0.3, "--workers", 2, *argv) == 0, capsys.readouterr()
    entry = json.loads((out / "fleet.json").read_text())["bags"]["long"]
    assert len(entry["units"]) >= 3 and {u["worker"] for u in entry["units"]} == {0, 1}
    assert entry["segmented"] == 6
    assert_same_bag(out / "bags" / "long", reference(src, tmp_path / "ref", argv))
    assert not (out / ".work" / "long").exists()


def test_interrupted_run_resumes_four_bags_equal_semsam_bag_a_corrupt_one_fails_parquet_rows(
        bags, prompts, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """Four bags and a corrupt one (inputs: a list file, a glob, a folder): a run interrupted after its first bag,
    then resumed; every good bag equal to `semsam bag`'s, the corrupt one retried and failed, the Parquet rows."""
    from semsam_ros.fleet import runner

    argv = options(prompts, tiny_checkpoint)
    corrupt = write_bag(tmp_path / "broken", "sqlite3", [(CAM, IMAGE, T0 + k, encoded(0, "rgb8")) for k in range(3)])
    (data,) = corrupt.glob("*.db3")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    listing = tmp_path / "bags.txt"
    listing.write_text(f"# two of them\n{bags[0]}\n{bags[1]}\n")
    inputs = (listing, str(bags[0].parent / "rec[23]"), corrupt)
    out = tmp_path / "fleet"
    save = runner._Manifest.save
    interrupted = []

    def interrupt_after_the_first_bag(self: Any) -> None:
        save(self)
        if not interrupted and any(e["status"] == "done" for e in self.data["bags"].values()):
            interrupted.append(True)
            raise KeyboardInterrupt

    monkeypatch.setattr(runner._Manifest, "save", interrupt_after_the_first_bag)
    assert semsam("fleet", *inputs, "--out", out, "--workers", 1, *argv) == 130
    monkeypatch.undo()
    manifest = json.loads((out / "fleet.json").read_text())
    assert manifest["runs"][0]["interrupted"] and manifest["bags"]["rec0"]["status"] == "done"
    assert {e["status"] for name, e in manifest["bags"].items() if name != "rec0"} == {"interrupted"}
    refs = {b.name: reference(b, tmp_path / f"ref-{b.name}", argv) for b in bags}
    first = out / "bags" / "rec0"
    assert_same_bag(first, refs["rec0"])  # a finished output is valid
    stamp = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}

    capsys.readouterr()
    status = semsam("fleet", *inputs, "--out", out, "--workers", 2, "--retries", 1, *argv)
    stdout, err = capsys.readouterr()
    assert status == 1, err
    assert "4 of 5 bag(s) done" in stdout and "failed: broken" in err and "cannot read bag" in err
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == stamp  # skipped, not redone
    manifest = json.loads((out / "fleet.json").read_text())
    assert manifest["weights"]["sha256"] and manifest["versions"]["ray"] == ray.__version__
    assert manifest["options"]["prompts"] == str(prompts) and manifest["inputs"][0] == str(bags[0])
    assert len(manifest["runs"]) == 2 and manifest["runs"][1]["frames"] == 9
    broken = manifest["bags"]["broken"]
    assert broken["status"] == "failed" and "cannot read bag" in broken["error"] and broken["attempts"] == 2
    assert not (out / "bags" / "broken").exists()
    for bag in bags:
        entry = manifest["bags"][bag.name]
        assert entry["status"] == "done" and entry["frames"] == entry["segmented"] == 3
        assert_same_bag(out / "bags" / bag.name, refs[bag.name])

    table = pq.read_table(out / "segments")  # the dataset: one file per bag
    assert table.num_rows == sum(manifest["bags"][b.name]["rows"] for b in bags) > 0
    rows = table.to_pylist()
    for bag in bags:
        got = [r for r in rows if r["bag"] == bag.name]
        want = [(t, msg, s, seg) for t, msg, _ in read_bag(out / "bags" / bag.name)[SEGMENTS]
                for s, seg in zip(msg.segments, msg_to_segments(msg))]
        assert len(got) == len(want)
        frames = sorted({t for t, *_ in want})
        for row, (time_ns, msg, s, seg) in zip(got, want):
            assert (row["topic"], row["image_topic"], row["bag_time_ns"], row["stamp_ns"], row["frame"]) == (
                SEGMENTS, CAM, time_ns, stamp_to_ns(msg.header.stamp), frames.index(time_ns))
            assert (row["segment_id"], row["prompt_id"], row["track_id"], row["level"], row["kind"], row["label"]) == (
                s.id, s.prompt_id, s.track_id, s.level, s.kind, s.label)
            assert np.float32(row["iou_score"]) == np.float32(s.iou_score) and row["area"] == s.area
            assert (row["bbox_x"], row["bbox_y"], row["bbox_width"], row["bbox_height"]) == (
                s.bbox.x_offset, s.bbox.y_offset, s.bbox.width, s.bbox.height)
            assert row["has_3d"] == s.has_3d and row["position_z"] == s.pose.position.z
            mask = rle_to_mask({"size": row["mask_size"], "counts": row["mask_counts"]})
            assert np.array_equal(mask, seg.mask)

    assert semsam("fleet", *inputs, "--out", out, *argv, "--set", "score_threshold=0.5") == 1
    assert "holds a fleet run with other options" in capsys.readouterr().err


def test_only_the_fleet_runner_imports_ray() -> None:
    code = ("import sys, semsam_ros, semsam_ros.bag, semsam_ros.fleet.plan, semsam_ros.fleet.work, "
            "semsam_ros.fleet.dataset\nfrom semsam_ros.cli.main import build_parser\nbuild_parser()\n"
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
