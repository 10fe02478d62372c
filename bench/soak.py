"""Soak: RSS over N frames of the node's per-message input path, and what hostile inputs cost. Prints JSON.

Each frame: a 1280x720 JPEG CompressedImage decoded (ros/images), a Prompt converted (ros/convert), the camera
taken from a distorted CameraInfo (geometry, cached by content) and 3D measured for 10 masks on a 16UC1 depth
image. Also: the same 3D step with an undistorted camera (the cost of distortion per frame, after the first),
a JPEG and a PNG bomb (12000x9000 claimed in a ~1 KB header) and a click on a distorted 4096x3072 camera.
Usage: python3 bench/soak.py [--frames 300]
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import struct
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semsam_ros.geometry import CameraModel, project_point, segments_to_3d  # noqa: E402
from semsam_ros.limits import InputRejected  # noqa: E402
from semsam_ros.ros.convert import prompt_from_msg  # noqa: E402
from semsam_ros.ros.images import image_to_depth, image_to_rgb  # noqa: E402
from semsam_ros.types import make_segment  # noqa: E402

W, H = 1280, 720
K = [900.0, 0.0, 640.0, 0.0, 900.0, 360.0, 0.0, 0.0, 1.0]


def rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def camera_info(distorted: bool, width: int = W, height: int = H, k: list[float] = K) -> SimpleNamespace:
    d = [-0.28, 0.07, 0.001, -0.0005, 0.0] if distorted else [0.0] * 5
    return SimpleNamespace(k=k, d=d, distortion_model="plumb_bob", width=width, height=height, p=[0.0] * 12)


def frame_messages(rng: np.random.Generator) -> tuple[SimpleNamespace, SimpleNamespace, SimpleNamespace]:
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG", quality=80)
    image = SimpleNamespace(format="rgb8; jpeg compressed bgr8", data=jpeg.getvalue())
    depth = (1000 + rng.integers(0, 500, (H, W))).astype("<u2")
    depth_msg = SimpleNamespace(height=H, width=W, encoding="16UC1", is_bigendian=0, step=2 * W, data=depth.tobytes())
    point = SimpleNamespace(x=640.0, y=360.0, z=0.0)
    prompt = SimpleNamespace(prompt_id=1, points=[point], boxes=[], levels=b"\x01\x03", text="", sticky=False,
                             header=SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=0), frame_id="cam"))
    return image, depth_msg, prompt


def masks() -> list:
    out = []
    for i in range(10):
        mask = np.zeros((H, W), bool)
        mask[60 * i : 60 * i + 120, 100 * i : 100 * i + 200] = True
        out.append(make_segment(mask, 3, 0.9, id=i))
    return out


def time_3d(distorted: bool, depth: np.ndarray, segments: list, frames: int) -> float:
    """Median ms of one frame's 3D step, the camera taken from its CameraInfo each frame as the node does."""
    info = camera_info(distorted)
    segments_to_3d(segments, depth, CameraModel.from_camera_info(info))  # the first frame builds the map
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        segments_to_3d(segments, depth, CameraModel.from_camera_info(info))
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def bomb(codec: str) -> SimpleNamespace:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format=codec)
    data = out.getvalue()
    if codec == "PNG":
        ihdr = b"IHDR" + struct.pack(">II", 12000, 9000) + data[24:29]
        data = data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]
    else:
        sof = data.index(b"\xff\xc0")
        data = data[: sof + 5] + struct.pack(">HH", 9000, 12000) + data[sof + 9 :]
    return SimpleNamespace(format=codec.lower(), data=data)


def hostile() -> dict:
    """Seconds and RSS growth of each hostile input (each must be rejected, not decoded)."""
    report = {}
    for codec in ("JPEG", "PNG"):
        msg, before = bomb(codec), rss_mb()
        start = time.perf_counter()
        try:
            image_to_rgb(msg)
            cause = "accepted"
        except InputRejected as exc:
            cause = exc.cause
        report[f"{codec.lower()}_bomb"] = {"bytes": len(msg.data), "cause": cause,
                                           "ms": round((time.perf_counter() - start) * 1e3, 3),
                                           "rss_growth_mb": round(rss_mb() - before, 1)}
    info = camera_info(True, 4096, 3072, [2000.0, 0.0, 2048.0, 0.0, 2000.0, 1536.0, 0.0, 0.0, 1.0])
    times = []
    for _ in range(200):
        start = time.perf_counter()
        project_point([0.1, -0.05, 2.0], CameraModel.from_camera_info(info))
        times.append((time.perf_counter() - start) * 1e6)
    report["click_4k_distorted_us"] = {"first": round(times[0], 1), "median": round(float(np.median(times)), 1)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image, depth_msg, prompt = frame_messages(rng)
    segments = masks()
    report: dict = {"frames": args.frames, "image": f"{W}x{H} jpeg", "hostile": hostile()}
    start_rss, samples = rss_mb(), []
    for i in range(args.frames):
        image_to_rgb(image)
        prompt_from_msg(prompt)
        segments_to_3d(segments, image_to_depth(depth_msg), CameraModel.from_camera_info(camera_info(True)))
        if i % max(1, args.frames // 10) == 0 or i == args.frames - 1:
            samples.append({"frame": i, "rss_mb": round(rss_mb(), 1)})
    report["rss_mb"] = {"start": round(start_rss, 1), "samples": samples,
                        "growth_after_first_frame": round(samples[-1]["rss_mb"] - samples[0]["rss_mb"], 1)}
    depth = image_to_depth(depth_msg)
    report["3d_ms_per_frame"] = {"distorted": round(time_3d(True, depth, segments, 20), 2),
                                 "undistorted": round(time_3d(False, depth, segments, 20), 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
