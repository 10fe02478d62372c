"""`semsam bag` / `process_bag` on bags written here with rosbags, read back and compared with the Python API."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("rosbags")

from PIL import Image as PILImage  # noqa: E402
from rosbags.rosbag2 import Reader, StoragePlugin, Writer  # noqa: E402

from semsam_ros.bag import (  # noqa: E402
    BagError, BagOptions, BagTime, load_prompts, parse_topic_map, process_bag,
)
from semsam_ros.cli import main  # noqa: E402
from semsam_ros.geometry.cloud import CLOUD_DTYPE  # noqa: E402
from semsam_ros.inference.amg import AutomaticMaskGenerator  # noqa: E402
from semsam_ros.inference.postprocess import PostprocessParams, postprocess_prompt  # noqa: E402
from semsam_ros.inference.predictor import Predictor  # noqa: E402
from semsam_ros.ros.convert import PromptRequest, make_header, msg_to_segments, prompt_to_msg, stamp_to_ns  # noqa: E402
from semsam_ros.ros.frame_processor import Frame, FrameProcessor  # noqa: E402
from semsam_ros.ros.params import NodeParams  # noqa: E402
from semsam_ros.ros.images import image_to_rgb  # noqa: E402
from semsam_ros.ros.msgtypes import MessageTypes  # noqa: E402
from semsam_ros.ros.pipeline import ModelPipeline  # noqa: E402
from semsam_ros.ros.outputs import OUTPUT_TYPES, build_outputs  # noqa: E402
from semsam_ros.ros.scheduler import Scheduler  # noqa: E402
from semsam_ros.ros.telemetry import Telemetry  # noqa: E402
from semsam_ros.ros.typestore import make_typestore  # noqa: E402

IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
H, W = 96, 120  # short side = --input-size: the model sees the frames unresized
SEC, T0 = 1_000_000_000, 1_700_000_000 * 1_000_000_000
CAM, CAM2 = "/cam/image_raw", "/cam2/image/compressed"
REPO = Path(__file__).resolve().parents[1]
STORE = make_typestore("humble")
TYPES = MessageTypes.from_typestore(STORE)
SCORE_THRESHOLD = -1.0  # the tiny random model's IoU scores lie near 0: every mask passes
PARAMS = NodeParams(score_threshold=SCORE_THRESHOLD)


# --- writing and reading bags ---------------------------------------------------------------------------------


def scene(k: int) -> np.ndarray:
    """Frame k: gradients and a bright square that moves with k."""
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([xx * 3, yy * 4, 255 - xx * 2], axis=-1).astype(np.uint8)
    rgb[10 + k: 34 + k, 20 + 2 * k: 44 + 2 * k] = (240, 220, 30)
    return rgb


def header(k: int, frame_id: str = "camera_optical") -> Any:
    return make_header(TYPES, T0 + k * SEC // 10 + 123, frame_id)


def raw_image(hdr: Any, encoding: str, pixels: np.ndarray, pad: int = 0, big: bool = False) -> Any:
    """An Image of ``pixels`` with ``pad`` junk bytes after every row."""
    h, w = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder(">" if big else "<")).reshape(h, -1)
    rows = rows.view(np.uint8)
    data = np.concatenate([rows, np.full((h, pad), 77, np.uint8)], axis=1)
    return TYPES.make(IMAGE, header=hdr, height=h, width=w, encoding=encoding, is_bigendian=int(big),
                      step=rows.shape[1] + pad, data=data.ravel())


def encoded(k: int, encoding: str) -> Any:
    """Frame k in ``encoding``, with row padding."""
    rgb = scene(k)
    if encoding == "rgb8":
        return raw_image(header(k), "rgb8", rgb, pad=5)
    if encoding == "bgr8":
        return raw_image(header(k), "bgr8", rgb[..., ::-1])
    if encoding == "rgba8":
        return raw_image(header(k), "rgba8", np.dstack([rgb, np.full((H, W), 9, np.uint8)]), pad=4)
    if encoding == "mono8":
        return raw_image(header(k), "mono8", rgb[..., 1], pad=3)
    if encoding == "mono16":
        return raw_image(header(k), "mono16", rgb[..., 0].astype(np.uint16) * 257, pad=2, big=True)
    if encoding == "uyvy":
        y, u, v = rgb[..., 1], rgb[:, 0::2, 0], rgb[:, 0::2, 2]
        quads = np.stack([u, y[:, 0::2], v, y[:, 1::2]], axis=-1).reshape(H, W, 2)
        return raw_image(header(k), "uyvy", quads, pad=8)
    raise ValueError(encoding)


def compressed(k: int, codec: str) -> Any:
    out = io.BytesIO()
    PILImage.fromarray(scene(k)).save(out, format=codec.upper())
    fmt = "rgb8; jpeg compressed bgr8" if codec == "jpeg" else "png"
    return TYPES.make(COMPRESSED, header=header(k, "camera2"), format=fmt, data=TYPES.byte_array(out.getvalue()))


def write_bag(path: Path, storage: str, messages: list[tuple[str, str, int, Any]]) -> Path:
    """A bag of (topic, type, bag time, message or raw CDR bytes), written in the order given."""
    with Writer(path, version=9, storage_plugin=StoragePlugin[storage.upper()]) as writer:
        conns: dict[str, Any] = {}
        for topic, msgtype, time_ns, msg in messages:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=STORE)
            writer.write(conns[topic], time_ns, msg if isinstance(msg, bytes) else STORE.serialize_cdr(msg, msgtype))
    return path


def read_bag(path: Path) -> dict[str, list[tuple[int, Any, bytes]]]:
    """topic -> [(bag time, deserialised message, raw bytes)] in bag order."""
    out: dict[str, list[tuple[int, Any, bytes]]] = {}
    with Reader(path) as reader:
        topics = {t: info.msgtype for t, info in reader.topics.items()}
        out = {t: [] for t in topics}
        for conn, time_ns, raw in reader.messages():
            out[conn.topic].append((time_ns, STORE.deserialize_cdr(raw, conn.msgtype), raw))
    return out


# --- the Python API's answer ----------------------------------------------------------------------------------


def inside(prompt: PromptRequest) -> bool:
    x, y = prompt.points.T if len(prompt.points) else (np.zeros(0), np.zeros(0))
    return bool(np.all((x >= 0) & (x <= W) & (y >= 0) & (y <= H)) and np.all(prompt.boxes[:, 2:] <= (W, H)))


def expected(predictor: Predictor, rgb: np.ndarray, prompts: list[PromptRequest]) -> list:
    """Predictor + postprocess_prompt with the node's thresholds, prompts answered in one call."""
    thresholds = PostprocessParams(iou_threshold=SCORE_THRESHOLD, keep_best_when_none=False)
    prompts = [p for p in prompts if inside(p)]
    points = np.concatenate([p.points for p in prompts] + [np.zeros((0, 2))])
    boxes = np.concatenate([p.boxes for p in prompts] + [np.zeros((0, 4))])
    predictor.set_image(rgb)
    pred = predictor.predict(points=points, boxes=boxes)
    segments, point_row, box_row = [], 0, len(points)
    for p in prompts:
        levels = p.levels or (1, 2, 3, 4, 5, 6)
        cols = [level - 1 for level in levels]
        for xy in p.points:
            segments += postprocess_prompt(pred.mask_logits[point_row][cols], pred.iou_scores[point_row][cols],
                                           thresholds, p.prompt_id, tuple(xy), levels)
            point_row += 1
        for _ in p.boxes:
            segments += postprocess_prompt(pred.mask_logits[box_row][cols], pred.iou_scores[box_row][cols],
                                           thresholds, p.prompt_id, None, levels)
            box_row += 1
    return segments


def assert_same_segments(message: Any, reference: list) -> None:
    got = msg_to_segments(message)
    assert len(got) == len(reference) > 0
    for seg, ref in zip(got, reference):
        assert seg.mask.shape == ref.mask.shape == (H, W)
        assert (seg.level, seg.prompt_id, seg.area, tuple(seg.bbox)) == (ref.level, ref.prompt_id, ref.area,
                                                                           tuple(ref.bbox))
        assert np.array_equal(seg.mask, ref.mask)
        assert seg.iou_score == pytest.approx(ref.iou_score, abs=1e-6)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """The tiny model runs fastest on one thread; on busy shared cores, more threads make it many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def predictor(tiny_model) -> Predictor:
    return Predictor(tiny_model, short_side=96)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """``semsam *argv``; ``semsam bag`` gets SCORE_THRESHOLD first (a test's own ``--set`` comes later and wins)."""
    if argv[:1] == ("bag",):
        argv = ("bag", "--set", f"score_threshold={SCORE_THRESHOLD}", *argv[1:])
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# --- tests ----------------------------------------------------------------------------------------------------

ENCODINGS = ["rgb8", "bgr8", "rgba8", "mono8", "mono16", "uyvy"]
PROMPTS_YAML = f"""
{CAM}:
  - points: [[30, 22]]
    boxes: [[8, 6, 50, 40]]
    levels: [1, 3, 6]
  - id: 7
    points: [[60, 50], [12, 55]]
  - id: 9
    points: [[500, 10]]      # outside the 120x96 frames: rejected on every frame
{CAM2}:
  - boxes: [[0, 0, 40, 32]]
"""


@pytest.fixture(scope="module")
def mixed_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sqlite3: six raw encodings (padded rows, big-endian mono16), an unsupported and a truncated frame, a
    CompressedImage topic (png and jpeg) and a topic to copy."""
    messages: list[tuple[str, str, int, Any]] = []
    for k, encoding in enumerate(ENCODINGS):
        messages.append((CAM, IMAGE, T0 + k * SEC // 10 + 5000, encoded(k, encoding)))
        if k < 3:
            messages.append((CAM2, COMPRESSED, T0 + k * SEC // 10 + 6000, compressed(k, "png" if k % 2 else "jpeg")))
        if k == 2:
            messages.append(("/chatter", "std_msgs/msg/String", T0 + k * SEC // 10 + 7000,
                             TYPES.make("std_msgs/msg/String", data="hello")))
    k = len(ENCODINGS)
    bayer = raw_image(header(k), "bayer_rggb8", scene(k)[..., 0])
    short = raw_image(header(k + 1), "rgb8", scene(k + 1))
    short.data = short.data[:100]
    messages += [(CAM, IMAGE, T0 + k * SEC // 10, bayer), (CAM, IMAGE, T0 + (k + 1) * SEC // 10, short)]
    return write_bag(tmp_path_factory.mktemp("mixed") / "in", "sqlite3", messages)


def test_cli_yaml_prompts_every_frame_matches_python_api(mixed_bag, tiny_checkpoint, predictor, tmp_path, capsys):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(PROMPTS_YAML)
    out = tmp_path / "out"
    status, stdout, err = run_cli(capsys, "bag", mixed_bag, "--out", out, "--image-topic", CAM, "--image-topic",
                                  CAM2, "--prompts", prompts, "--checkpoint", tiny_checkpoint, "--input-size", 96,
                                  "-q")
    assert status == 0, err
    assert "segmented 9 of 11 frame(s) read (2 skipped)" in stdout
    assert "image/UnsupportedEncodingError/bayer_rggb8: 1" in stdout and "image/InputRejected/malformed: 1" in stdout
    assert "prompt/PromptError/outside: 6" in stdout
    assert "unsupported image encoding 'bayer_rggb8'" in err

    src, dst = read_bag(mixed_bag), read_bag(out)
    with Reader(out) as reader:
        assert reader.topics[f"{CAM}/segments"].msgtype == "semsam_ros/msg/SegmentArray"
    for topic in (CAM, CAM2, "/chatter"):  # copied byte for byte, at the same bag times
        assert [(t, raw) for t, _, raw in dst[topic]] == [(t, raw) for t, _, raw in src[topic]]
    yaml_prompts = load_prompts(prompts, [CAM, CAM2])
    for topic in (CAM, CAM2):
        base = topic.removesuffix("/compressed")
        frames = src[topic][: len(ENCODINGS)]  # the decodable ones (all 3 compressed frames)
        results, overlays = dst[f"{base}/segments"], dst[f"{base}/overlay"]
        assert len(results) == len(overlays) == len(frames)
        for (time_ns, image, _), (r_time, result, _), (o_time, overlay, _) in zip(frames, results, overlays):
            assert time_ns == r_time == o_time
            assert stamp_to_ns(result.header.stamp) == stamp_to_ns(image.header.stamp)
            assert result.header.frame_id == overlay.header.frame_id == image.header.frame_id
            assert stamp_to_ns(overlay.header.stamp) == stamp_to_ns(image.header.stamp)
            assert (result.height, result.width) == (overlay.height, overlay.width) == (H, W)
            assert overlay.encoding == "rgb8" and overlay.step == 3 * W
            assert_same_segments(result, expected(predictor, image_to_rgb(image), yaml_prompts[topic]))


def test_prompt_topic_stamp_matching_sticky_every_and_mcap(tmp_path, predictor):
    frame_time = [T0 + k * SEC // 10 + 5000 for k in range(10)]
    messages = [(CAM, IMAGE, frame_time[k], encoded(k, "rgb8")) for k in range(10)]

    def prompt(pid: int, time_ns: int, stamp_k: int | None, points=(), sticky: bool = False, stamp: int = 0):
        request = PromptRequest(pid, np.array(points, np.float64).reshape(-1, 2), levels=(2, 4), sticky=sticky,
                                stamp_ns=stamp or (stamp_to_ns(header(stamp_k).stamp) if stamp_k is not None else 0))
        return ("/semsam/prompt", "semsam_ros/msg/Prompt", time_ns, prompt_to_msg(TYPES, request))

    messages += [
        prompt(1, T0 - SEC, 2, [(20, 20)]),  # logged before any frame, stamped on frame 2: answered on 2 only
        prompt(2, frame_time[1] + 10, None, [(40, 30)]),  # stamp zero: the newest frame at its bag time, 1
        prompt(3, frame_time[4] + 10, 4, [(50, 40)], sticky=True),  # frames 4 and later...
        prompt(3, frame_time[6] + 10, 6, [(10, 50)], sticky=True),  # ...replaced from frame 6...
        prompt(3, frame_time[8] + 10, 8),  # ...removed from frame 8 (no point, no box)
        prompt(4, frame_time[5], None, [(5, 5)], stamp=T0 + 99 * SEC),  # 99 s away from every frame: rejected
    ]
    bag = write_bag(tmp_path / "in", "mcap", messages)
    logs: list[str] = []
    options = BagOptions([CAM], prompt_topics={CAM: "/semsam/prompt"}, every=3, storage="sqlite3", params=PARAMS)
    summary = process_bag(bag, tmp_path / "out", predictor, options, log=logs.append)
    assert summary.errors == {"prompt/PromptError/stamp": 1}
    assert any("stamp is" in line for line in logs)
    assert summary.storage == "sqlite3" and (tmp_path / "out" / "out.db3").is_file()

    # frames 0, 3, 6, 9 (every 3rd) and those a prompt is stamped on: 1, 2, 4 (6 anyway; 8 only removes)
    expected_ids = {0: [], 1: [2], 2: [1], 3: [], 4: [3], 6: [3], 9: []}
    points = {1: (40, 30), 2: (20, 20), 4: (50, 40), 6: (10, 50)}
    results = read_bag(tmp_path / "out")[f"{CAM}/segments"]
    assert [t for t, _, _ in results] == [frame_time[k] for k in expected_ids]
    for (_, result, _), (k, ids) in zip(results, expected_ids.items()):
        assert sorted({s.prompt_id for s in result.segments}) == ids
        if ids:
            request = PromptRequest(ids[0], np.array([points[k]], np.float64), levels=(2, 4))
            assert_same_segments(result, expected(predictor, scene(k), [request]))
        else:
            assert result.segments == [] and (result.height, result.width) == (H, W)


def test_auto_mode_window_and_compressed_topic(tmp_path, tiny_checkpoint, predictor, capsys):
    messages = [(CAM2, COMPRESSED, T0 + k * SEC, compressed(k, "png")) for k in range(5)]
    bag = write_bag(tmp_path / "in", "mcap", messages)
    out = tmp_path / "out"
    status, stdout, err = run_cli(capsys, "bag", bag, "--out", out, "--image-topic", CAM2, "--auto", "--levels",
                                  "1,3", "--set", "points_per_side=3", "--set", "auto_iou_threshold=-100",
                                  "--set", "stability_threshold=0", "--start", "1", "--end", f"{T0 + 3 * SEC}ns",
                                  "--segments-topic", "/seg", "--no-overlay", "--checkpoint", tiny_checkpoint,
                                  "--input-size", 96, "-q")
    assert status == 0, err
    dst = read_bag(out / "out.mcap")
    assert set(dst) == {CAM2, "/seg", "/cam2/image/label_image"}  # --no-overlay: no overlay
    assert [t for t, _, _ in dst[CAM2]] == [T0 + SEC, T0 + 2 * SEC]  # the window [1 s, 3 s) is copied...
    assert [t for t, _, _ in dst["/seg"]] == [T0 + SEC, T0 + 2 * SEC]  # ...and processed
    for k, (_, result, _) in zip((1, 2), dst["/seg"]):
        generator = AutomaticMaskGenerator(predictor, points_per_side=3, levels=(1, 3), pred_iou_thresh=-100,
                                           stability_score_thresh=0, box_nms_thresh=0.7, min_mask_region_area=100)
        reference = generator.generate_segments(scene(k))
        got = msg_to_segments(result)
        assert len(got) == len(reference) > 0
        assert all(s.prompt_id == -1 for s in got)
        for seg, ref in zip(got, reference):
            assert seg.level == ref.level and seg.area == ref.area and np.array_equal(seg.mask, ref.mask)


def test_interrupt_leaves_a_readable_bag_with_the_results_so_far(mixed_bag, predictor, tmp_path, monkeypatch):
    calls = []
    process = FrameProcessor.process

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return process(self, *args, **kwargs)

    monkeypatch.setattr(FrameProcessor, "process", interrupted)
    logs: list[str] = []
    prompts = {CAM: [PromptRequest(0, np.array([[30.0, 20.0]]))]}
    options = BagOptions([CAM], prompts=prompts, storage="mcap", params=PARAMS)
    with pytest.raises(KeyboardInterrupt):
        process_bag(mixed_bag, tmp_path / "out", predictor, options, log=logs.append)
    assert logs[-1].startswith("interrupted: segmented 3 of 4 frame(s)")
    dst = read_bag(tmp_path / "out")  # metadata and mcap summary were written: a valid bag
    src = read_bag(mixed_bag)
    assert len(dst[f"{CAM}/segments"]) == len(dst[f"{CAM}/overlay"]) == 3
    for (_, result, _), (_, image, _) in zip(dst[f"{CAM}/segments"], src[CAM]):
        assert stamp_to_ns(result.header.stamp) == stamp_to_ns(image.header.stamp) and len(result.segments) > 0
    assert len(dst[CAM]) == 4  # copied up to the interrupted frame


def test_cli_interrupt_exit_status(mixed_bag, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(FrameProcessor, "process", interrupted)
    status, _, err = run_cli(capsys, "bag", mixed_bag, "--out", tmp_path / "out", "--image-topic", CAM, "--auto",
                             "--checkpoint", tiny_checkpoint, "--input-size", 96, "-q")
    assert status == 130 and "interrupted: segmented 0 of 1 frame(s)" in err and "semsam: interrupted" in err
    assert read_bag(tmp_path / "out")[f"{CAM}/segments"] == []


def test_humble_style_bag_without_stored_definitions(tmp_path, predictor):
    """Humble's sqlite3 bags store neither message definitions nor type hashes: known types are copied with the
    typestore's definitions, an unknown type is left out with one log line."""
    from rosbags.typesys import get_types_from_msg

    store = make_typestore("humble")
    store.register(get_types_from_msg("int32 x", "my_msgs/msg/Thing"))
    path = tmp_path / "in"
    with Writer(path, version=8) as writer:
        image = writer.add_connection(CAM, IMAGE, typestore=store)
        thing = writer.add_connection("/thing", "my_msgs/msg/Thing", typestore=store)
        for k in range(2):
            writer.write(image, T0 + k, store.serialize_cdr(encoded(k, "rgb8"), IMAGE))
            writer.write(thing, T0 + k, store.serialize_cdr(store.types["my_msgs/msg/Thing"](x=k), "my_msgs/msg/Thing"))
    with sqlite3.connect(path / "in.db3") as db:
        db.execute("DELETE FROM message_definitions")
        db.execute("UPDATE topics SET type_description_hash = ''")
    metadata = yaml.safe_load((path / "metadata.yaml").read_text())
    for topic in metadata["rosbag2_bagfile_information"]["topics_with_message_count"]:
        del topic["topic_metadata"]["type_description_hash"]
    (path / "metadata.yaml").write_text(yaml.safe_dump(metadata))
    with Reader(path) as reader:
        assert {c.digest for c in reader.connections} == {""}

    logs: list[str] = []
    prompts = {CAM: [PromptRequest(0, np.array([[30.0, 20.0]]), levels=(3,))]}
    summary = process_bag(path, tmp_path / "out", predictor, BagOptions([CAM], prompts=prompts), log=logs.append)
    assert summary.segmented == 2 and summary.copied == 2
    assert logs == ["topic /thing not copied: type my_msgs/msg/Thing is unknown and the bag stores no definition of it"]
    with Reader(tmp_path / "out") as reader:
        assert {c.topic: c.digest for c in reader.connections}[CAM] == STORE.hash_rihs01(IMAGE)
    assert len(read_bag(tmp_path / "out")[f"{CAM}/segments"]) == 2


HOLE = 10  # depth is missing (0) in the first HOLE columns of every depth image


def test_3d_outputs_with_real_geometry_and_depth_logged_after_the_image(tmp_path, predictor):
    """Depth (a plane at k+1 m, no depth left of column HOLE) and camera_info (fx 100 * (k+1)) through the node's
    real 3D step: point counts, positions and the cloud follow from the depth and the camera of each frame."""
    messages = []
    for k in range(3):
        time_ns = T0 + k * SEC // 10
        depth = np.full((H, W), (k + 1) * 1000, np.uint16)
        depth[:, :HOLE] = 0
        messages.append((CAM, IMAGE, time_ns, encoded(k, "rgb8")))
        if k != 1:  # frame 1 has no depth
            depth_msg = raw_image(make_header(TYPES, stamp_to_ns(header(k).stamp) + 10**7, "cam"), "16UC1", depth)
            messages.append(("/cam/depth", IMAGE, time_ns + 3 * 10**7, depth_msg))
        fx = 100.0 * (k + 1)
        info = TYPES.make("sensor_msgs/msg/CameraInfo", header=header(k), height=H, width=W, distortion_model="",
                          d=np.zeros(0), k=np.array([fx, 0, 40, 0, fx, 32, 0, 0, 1]), r=np.eye(3).ravel(),
                          p=np.zeros(12), binning_x=0, binning_y=0,
                          roi=TYPES.make("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0,
                                         do_rectify=False))
        messages.append(("/cam/camera_info", "sensor_msgs/msg/CameraInfo", time_ns + 1, info))
    bag = write_bag(tmp_path / "in", "sqlite3", messages)
    options = BagOptions([CAM], prompts={CAM: [PromptRequest(0, np.array([[30.0, 20.0]]))]},
                         depth_topics={CAM: "/cam/depth"}, params=PARAMS)
    summary = process_bag(bag, tmp_path / "out", predictor, options, log=lambda _: None)
    assert summary.segmented == 3 and summary.errors == {"3d/no_depth": 1}
    dst = read_bag(tmp_path / "out")
    assert [t for t, _, _ in dst[f"{CAM}/points"]] == [T0, T0 + 2 * SEC // 10]
    assert len(dst[f"{CAM}/markers"]) == 2
    clouds = {k: np.frombuffer(bytes(msg.data), dtype=CLOUD_DTYPE)
              for k, (_, msg, _) in zip((0, 2), dst[f"{CAM}/points"])}
    for k, (time_ns, result, _) in enumerate(dst[f"{CAM}/segments"]):
        assert time_ns == T0 + k * SEC // 10  # written at the frame's bag time, though its depth came later
        segments = msg_to_segments(result)
        assert len(result.segments) == len(segments) > 0
        for msg, seg in zip(result.segments, segments):
            valid = int(seg.mask[:, HOLE:].sum())
            if k == 1:
                assert not msg.has_3d and msg.point_count == 0
                continue
            assert msg.point_count == valid and msg.valid_depth_ratio == pytest.approx(valid / seg.area)
            assert msg.has_3d and msg.pose.position.z == pytest.approx(k + 1, abs=1e-3)
            points = clouds[k][clouds[k]["segment_id"] == msg.id]
            assert 0 < len(points) <= valid and np.allclose(points["z"], k + 1)
            columns = np.nonzero(seg.mask[:, HOLE:].any(axis=0))[0] + HOLE
            u = points["x"] / points["z"] * 100.0 * (k + 1) + 40  # back to pixels with this frame's fx
            assert columns.min() - 1 <= u.min() and u.max() <= columns.max() + 1


TIMINGS = ("encode_ms", "decode_ms", "postprocess_ms", "total_ms")  # wall-clock: the one field that may differ


def test_node_and_bag_publish_the_same_messages_for_a_frame(tmp_path, predictor):
    """One frame with depth through the node's path (Scheduler + ros.outputs, every output subscribed) and through
    ``semsam bag``: every message is the same, byte for byte, but for the SegmentArray's timings."""
    k, time_ns = 2, T0
    depth = np.full((H, W), 1500, np.uint16)
    depth[:, :HOLE] = 0
    image = encoded(k, "rgb8")
    depth_msg = raw_image(header(k), "16UC1", depth)
    info = TYPES.make("sensor_msgs/msg/CameraInfo", header=header(k), height=H, width=W, distortion_model="",
                      d=np.zeros(0), k=np.array([90.0, 0, 40, 0, 90.0, 32, 0, 0, 1]), r=np.eye(3).ravel(),
                      p=np.zeros(12), binning_x=0, binning_y=0,
                      roi=TYPES.make("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0,
                                     do_rectify=False))
    prompts = [PromptRequest(4, np.array([[30.0, 20.0]]), levels=(1, 4, 6)),
               PromptRequest(5, boxes=np.array([[10.0, 8.0, 60.0, 50.0]]))]
    params = dataclasses.replace(PARAMS, overlay_alpha=0.4, label_image_level=4)

    bag = write_bag(tmp_path / "in", "sqlite3", [(CAM, IMAGE, time_ns, image), ("/cam/depth", IMAGE, time_ns, depth_msg),
                                                 ("/cam/camera_info", "sensor_msgs/msg/CameraInfo", time_ns, info)])
    process_bag(bag, tmp_path / "out", predictor, BagOptions([CAM], prompts={CAM: prompts},
                                                             depth_topics={CAM: "/cam/depth"}, params=params))
    from_bag = {topic.removeprefix(f"{CAM}/"): raw for topic, [(_, _, raw)] in read_bag(tmp_path / "out").items()
                if topic.startswith(f"{CAM}/")}

    pipeline = ModelPipeline(params, "cpu", want_points=lambda: True)
    node = Scheduler(params, predictor, TYPES, pipeline, model_id=predictor.model.model_id, log=print)
    node.submit_frame(image, depth_msg, info)
    for prompt in prompts:
        node.submit_prompt(prompt)
    (out,) = node.step()
    known = lambda name: OUTPUT_TYPES[name] in STORE.fielddefs  # every output with a type (vision_msgs: not here)
    published = build_outputs(TYPES, out, params, known, pipeline.semantics)

    assert set(published) == set(from_bag) == {"segments", "overlay", "label_image", "markers", "points"}
    segments = STORE.deserialize_cdr(from_bag.pop("segments"), OUTPUT_TYPES["segments"])
    assert len(segments.segments) > 3 and all(s.has_3d for s in segments.segments)
    for name in TIMINGS:
        setattr(segments, name, 0.0)
        setattr(published["segments"], name, 0.0)
    assert STORE.serialize_cdr(segments, OUTPUT_TYPES["segments"]) == STORE.serialize_cdr(
        published["segments"], OUTPUT_TYPES["segments"])
    for name, raw in from_bag.items():
        assert STORE.serialize_cdr(published[name], OUTPUT_TYPES[name]) == raw, name


def test_options_that_do_not_fit_the_bag_write_nothing(mixed_bag, predictor, tmp_path, monkeypatch):
    with pytest.raises(BagError, match="prompts names /x, which is not one of the image topics"):
        process_bag(mixed_bag, tmp_path / "x", predictor, BagOptions([CAM], prompts={"/x": []}))
    logs: list[str] = []
    with pytest.raises(BagError, match="camera_info topic /cam/camera_info is not in the bag"):
        process_bag(mixed_bag, tmp_path / "x", predictor,
                    BagOptions([CAM], auto=True, depth_topics={CAM: CAM2}), log=logs.append)
    options = BagOptions([CAM], auto=True, depth_topics={CAM: CAM2}, camera_info_topics={CAM: "/chatter"})
    with pytest.raises(BagError, match="camera_info topic /chatter has type std_msgs/msg/String"):
        process_bag(mixed_bag, tmp_path / "x", predictor, options, log=logs.append)
    assert not (tmp_path / "x").exists()  # nothing is written when the options do not fit the bag


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_corrupt_truncated_and_missing_bags_are_one_line_errors(storage, tmp_path, tiny_checkpoint, capsys):
    bag = write_bag(tmp_path / "in", storage, [(CAM, IMAGE, T0 + k, encoded(0, "rgb8")) for k in range(3)])
    (data,) = bag.glob("*.mcap" if storage == "mcap" else "*.db3")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    common = ("--out", tmp_path / "out", "--image-topic", CAM, "--auto", "--checkpoint", tiny_checkpoint)
    for argv, message in [
        (("bag", bag, *common), f"cannot read bag {bag}: "),
        (("bag-info", bag), f"cannot read bag {bag}: "),
        (("bag", tmp_path / "nope", *common), f"bag not found: {tmp_path / 'nope'}"),
        (("bag-info", tmp_path), f"cannot read bag {tmp_path}: "),
    ]:
        status, stdout, err = run_cli(capsys, *argv)
        assert status == 1 and stdout == ""
        assert err.startswith(f"semsam: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_bag_info(mixed_bag, capsys):
    status, stdout, _ = run_cli(capsys, "bag-info", mixed_bag)
    assert status == 0
    lines = stdout.splitlines()
    assert lines[0].startswith(f"{mixed_bag}: sqlite3, 12 message(s)")
    assert any(line.split()[:3] == [CAM, IMAGE, "8"] and "10.00 Hz, 120x96 rgb8" in line for line in lines)
    assert any(line.split()[:3] == [CAM2, COMPRESSED, "3"] and "rgb8; jpeg compressed bgr8" in line for line in lines)
    status, stdout, _ = run_cli(capsys, "bag-info", mixed_bag, "--json")
    info = json.loads(stdout)
    topics = {t["topic"]: t for t in info["topics"]}
    assert info["storage"] == "sqlite3" and info["messages"] == 12
    assert topics["/chatter"] == {"topic": "/chatter", "type": "std_msgs/msg/String", "count": 1}
    assert topics[CAM]["rate_hz"] == pytest.approx(10.0, rel=1e-3)
    assert topics[CAM2]["rate_hz"] == pytest.approx(10.0, rel=1e-3)  # 3 frames, 0.2 s


def test_user_errors(mixed_bag, tiny_checkpoint, tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("- points: [[1, 2, 3]]\n")
    common = ("--out", tmp_path / "out", "--checkpoint", tiny_checkpoint)
    for argv, message in [
        (("--image-topic", CAM), "nothing to segment"),
        (("--image-topic", "/nope", "--auto"), "image topic /nope is not in the bag (topics of type"),
        (("--image-topic", CAM, "--prompts", bad_yaml), "points must be a list of"),
        (("--image-topic", CAM, "--auto", "--set", "score_threshold=2", "--set", "nms_iou=3"),
         "nms_iou must lie in [0, 1]"),
        (("--image-topic", CAM, "--prompt-topic", "/chatter"), "prompt topic /chatter has type std_msgs/msg/String"),
        (("--image-topic", CAM, "--auto", "--start", "-1"), "a time is seconds after the bag start"),
    ]:
        status, _, err = run_cli(capsys, "bag", mixed_bag, *common, *argv)
        assert status in (1, 2) and message in err and err.count("\n") == 1, err
    (tmp_path / "out").mkdir()
    status, _, err = run_cli(capsys, "bag", mixed_bag, *common, "--image-topic", CAM, "--auto")
    assert status == 1 and "exists already" in err
    # python3 -m semsam_ros.cli: errors raised in semsam_ros.bag are still one line
    done = subprocess.run([sys.executable, "-m", "semsam_ros.cli", "bag", str(mixed_bag), "--out", str(tmp_path / "o"),
                           "--image-topic", CAM, "--auto", "--checkpoint", str(tmp_path / "nope.pth")],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1
    assert done.stderr == f"semsam: error: {tmp_path / 'nope.pth'}: checkpoint file not found\n"


def test_the_bag_library_never_loads_the_command_line(mixed_bag, tiny_checkpoint, tmp_path):
    code = f"""
import sys
from semsam_ros.bag import BagOptions, process_bag
from semsam_ros.inference.options import ModelOptions, load_predictor
from semsam_ros.ros.params import NodeParams

predictor, _ = load_predictor(ModelOptions({str(tiny_checkpoint)!r}, device="cpu", short_side={H}))
params = NodeParams(points_per_side=2, auto_iou_threshold=-100, stability_threshold=0)
summary = process_bag({str(mixed_bag)!r}, {str(tmp_path / "out")!r}, predictor, BagOptions([{CAM!r}], auto=True,
                      params=params), log=lambda _: None)
print(summary.segmented, sorted(m for m in sys.modules if m.startswith("semsam_ros.cli")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "6 []\n"  # the six decodable frames


def test_option_parsing(tmp_path):
    assert BagTime.parse("2.5").resolve(10 * SEC) == 12_500_000_000
    assert BagTime.parse("1700000000000000123").resolve(0) == 1700000000000000123
    assert BagTime.parse("42ns") == BagTime(42, True)
    assert parse_topic_map(["/p"], ["/a", "/b"], "--prompt-topic") == {"/a": "/p", "/b": "/p"}
    assert parse_topic_map(["/a=/p"], ["/a", "/b"], "--prompt-topic") == {"/a": "/p"}
    with pytest.raises(BagError, match="two --prompt-topic values for image topic /b"):
        parse_topic_map(["/p", "/b=/q"], ["/a", "/b"], "--prompt-topic")
    path = tmp_path / "p.yaml"
    path.write_text("/a:\n  - {points: [[1, 2]], levels: [3, 1], text: cup}\n  - {id: 5, boxes: [[0, 0, 4, 4]]}\n")
    first, second = load_prompts(path, ["/a", "/b"], default_levels=(2,))["/a"]
    assert (first.prompt_id, first.levels, first.text, first.points.tolist()) == (0, (1, 3), "cup", [[1.0, 2.0]])
    assert (second.prompt_id, second.levels, second.boxes.tolist()) == (5, (2,), [[0.0, 0.0, 4.0, 4.0]])
    for text, match in [("/c: []", "'/c' is not one of the image topics"), ("- {point: [[1, 2]]}", "unknown key"),
                        ("- {levels: [1]}", "needs at least one point"), ("- {points: [[1, 2]], id: -1}", "id must")]:
        path.write_text(text)
        with pytest.raises(BagError, match=match):
            load_prompts(path, ["/a"])


def test_core_process_answers_what_fits_and_skips_the_encoder_when_nothing_does(predictor):
    encoded_images = []

    class Counting:
        def __getattr__(self, name):
            return getattr(predictor, name)

        def encode_batch(self, images):
            encoded_images.extend(image.shape for image in images)
            return predictor.encode_batch(images)

    logs: list[str] = []
    core = FrameProcessor(PARAMS, Counting(), TYPES, ModelPipeline(PARAMS, "cpu"), Telemetry(logs.append, 10.0, time.monotonic))
    outside = PromptRequest(3, np.array([[500.0, 5.0]]))
    empty = core.process(Frame(encoded(0, "rgb8"), 0), [outside], auto=False)
    assert empty.segments == [] and empty.message.segments == [] and encoded_images == []
    assert (empty.message.height, empty.message.width) == (H, W)
    assert stamp_to_ns(empty.message.header.stamp) == stamp_to_ns(header(0).stamp)
    inside_prompt = PromptRequest(4, np.array([[10.0, 5.0]]), levels=(1,))
    answered = core.process(Frame(encoded(0, "rgb8"), 0), [outside, inside_prompt], auto=False)
    assert encoded_images == [(H, W, 3)] and {s.prompt_id for s in answered.segments} == {4}
    assert core.telemetry.errors.counts == {"prompt/PromptError/outside": 2}
    with pytest.raises(ValueError, match="unsupported image encoding 'bayer_rggb8'"):
        core.process(Frame(raw_image(header(0), "bayer_rggb8", scene(0)[..., 0]), 0), [inside_prompt], auto=False)
    assert core.telemetry.errors.counts["image/UnsupportedEncodingError/bayer_rggb8"] == 1


def test_track_follows_the_first_frames_prompts_through_the_bag(tmp_path, predictor):
    bag = write_bag(tmp_path / "in", "sqlite3", [(CAM, IMAGE, T0 + k * SEC // 10, encoded(k, "rgb8"))
                                                 for k in range(8)])
    request = PromptRequest(5, np.array([[30.0, 20.0], [100.0, 80.0]]), levels=(1, 3))
    options = BagOptions([CAM], prompts={CAM: [request]}, track=True, params=PARAMS, progress=False)
    summary = process_bag(bag, tmp_path / "out", predictor, options)
    assert summary.segmented == 8 and summary.errors == {}
    results = [msg for _, msg, _ in read_bag(tmp_path / "out")[f"{CAM}/segments"]]
    first = results[0].segments
    assert sorted(s.track_id for s in first) == [0, 1] and {s.prompt_id for s in first} == {5}
    for result in results:  # only tracked masks: the prompts are not answered again, no new id appears
        assert {s.track_id for s in result.segments} <= {0, 1} and len(result.segments) <= 2
        assert all(s.track_state == 1 for s in result.segments)
    with pytest.raises(BagError, match="single --image-topic"):
        process_bag(bag, tmp_path / "out2", predictor, BagOptions([CAM, CAM2], track=True, params=PARAMS))


def test_cheap_checks_come_before_the_model_is_loaded(mixed_bag, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import semsam_ros.cli.bag as cli_bag

    loads: list[Any] = []
    monkeypatch.setattr(cli_bag, "load_predictor", lambda args: loads.append(args) or pytest.fail("model loaded"))
    corrupt = write_bag(tmp_path / "corrupt", "mcap", [(CAM, IMAGE, T0, encoded(0, "rgb8"))])
    (data,) = corrupt.glob("*.mcap")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    clash = write_bag(tmp_path / "clash", "sqlite3", [(CAM, IMAGE, T0, encoded(0, "rgb8")),
                                                      (f"{CAM}/label_image", IMAGE, T0, encoded(0, "rgb8"))])
    (tmp_path / "file").write_text("")
    (tmp_path / "taken").mkdir()
    for bag, out, extra, message in [
        (corrupt, tmp_path / "o", (), f"cannot read bag {corrupt}: "),
        (clash, tmp_path / "o", (), f"label_image output topic {CAM}/label_image of image topic {CAM} exists "
                                    "already in the input bag; process a bag without it"),
        (mixed_bag, tmp_path / "o", ("--image-topic", CAM2, "--prompt-topic", "/chatter"), "prompt topic /chatter"),
        (mixed_bag, tmp_path / "taken", (), f"output {tmp_path / 'taken'} exists already; choose another --out"),
        (mixed_bag, tmp_path / "file" / "o", (), f"cannot create output {tmp_path / 'file' / 'o'}: "
                                                 f"{tmp_path / 'file'} is not a folder"),
        (mixed_bag, tmp_path / "o", ("--set", "semantics=true", "--set", f"clip_model={tmp_path / 'taken'}"),
         f"semantics=true: cannot load the CLIP model {str(tmp_path / 'taken')!r}"),
        (mixed_bag, tmp_path / "o", ("--set", "semantics=true", "--set", "clip_model=nobody/no-such-clip"),
         "semantics=true: the CLIP model 'nobody/no-such-clip' is not on this machine"),
    ]:
        status, stdout, err = run_cli(capsys, "bag", bag, "--out", out, "--image-topic", CAM, "--auto",
                                      "--checkpoint", tiny_checkpoint, *extra)
        assert status == 1 and stdout == "" and err.count("\n") == 1, err
        assert err.startswith(f"semsam: error: {message}"), err
    assert loads == [] and not (tmp_path / "o").exists()
