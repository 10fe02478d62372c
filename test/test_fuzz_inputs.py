"""Seeded fuzz of every input path a message reaches first: each input is accepted or rejected with a named cause
(an InputRejected), quickly, and memory stays bounded. Images, compressed images, prompts, camera infos."""
from __future__ import annotations

import io
import resource
import struct
import time
import warnings
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from semsam_ros.geometry import CameraModel, project_point
from semsam_ros.limits import InputRejected
from semsam_ros.ros.convert import prompt_from_msg
from semsam_ros.ros.images import _LAYOUTS, UnsupportedEncodingError, image_to_depth, image_to_rgb

CASES = 1000  # per path; the whole file runs in a few seconds
SLOWEST_S = 5.0  # a guard against stalls on busy CI cores, not a speed target (that is bench/soak.py)
RSS_GROWTH_MB = 1024
NUMBERS = [0, 1, -1, 7, 2**31, 2**32 - 1, 10**9, 65535]
FLOATS = [0.0, -1.0, 0.5, 3.0, 1e300, -1e300, float("nan"), float("inf"), -float("inf"), 1e-300]


def pick(rng: np.random.Generator, values: list):
    return values[rng.integers(len(values))]


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check(fn, inputs) -> dict[str, int]:
    """Run ``fn`` on each input: it returns or raises InputRejected with a cause; counts per outcome."""
    outcomes: dict[str, int] = {}
    start_rss = max_rss_mb()
    for value in inputs:
        start = time.perf_counter()
        try:
            fn(value)
            outcome = "accepted"
        except InputRejected as exc:
            assert isinstance(exc.cause, str) and exc.cause, exc
            outcome = "unsupported_encoding" if isinstance(exc, UnsupportedEncodingError) else exc.cause
        elapsed = time.perf_counter() - start
        assert elapsed < SLOWEST_S, (value, elapsed)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert max_rss_mb() - start_rss < RSS_GROWTH_MB
    return outcomes


def raw_images(rng: np.random.Generator):
    encodings = list(_LAYOUTS) + ["bayer_rggb8", "", "rgb8 ", "RGB8"]
    for _ in range(CASES):
        height, width = (pick(rng, NUMBERS + [int(rng.integers(1, 64))]) for _ in range(2))
        size = int(rng.integers(0, 4096))
        yield SimpleNamespace(height=height, width=width, encoding=pick(rng, encodings),
                              is_bigendian=int(rng.integers(2)), step=pick(rng, NUMBERS + [width * 3]),
                              data=rng.integers(0, 256, size, dtype=np.uint8).tobytes())


def _png_with_size(data: bytes, width: int, height: int) -> bytes:
    ihdr = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def compressed_images(rng: np.random.Generator):
    formats = ["jpeg", "png", "rgb8; jpeg compressed bgr8", "16UC1; png compressed", "bmp", "tiff", ""]
    seeds = {}
    for codec, mode in (("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGBA"), ("PNG", "I;16"), ("PNG", "P")):
        out = io.BytesIO()
        Image.new(mode, (int(rng.integers(1, 40)), int(rng.integers(1, 40)))).save(out, format=codec)
        seeds.setdefault(codec, []).append(out.getvalue())
    for i in range(CASES):
        codec = pick(rng, ["JPEG", "PNG"])
        data = bytearray(pick(rng, seeds[codec]))
        kind = i % 4
        if kind == 0:  # flipped bytes
            for pos in rng.integers(0, len(data), int(rng.integers(1, 20))):
                data[pos] = int(rng.integers(256))
        elif kind == 1:  # truncated
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 2 and codec == "PNG":  # a header claiming any size
            data = bytearray(_png_with_size(bytes(data), *(pick(rng, NUMBERS) % 2**32 for _ in range(2))))
        elif kind == 2:
            sof = data.find(b"\xff\xc0")
            data[sof + 5 : sof + 9] = struct.pack(">HH", *(int(v) for v in rng.integers(0, 65536, 2)))
        yield SimpleNamespace(format=pick(rng, formats + [codec.lower()] * 4), data=bytes(data))


def prompts(rng: np.random.Generator):
    stamp = SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=2), frame_id="cam")
    values = FLOATS + [1e20, 12.5]
    for _ in range(CASES):
        points = [SimpleNamespace(x=pick(rng, values), y=pick(rng, values), z=0.0)
                  for _ in range(int(rng.integers(0, 4)))]
        boxes = [SimpleNamespace(x_offset=pick(rng, NUMBERS), y_offset=pick(rng, NUMBERS), width=pick(rng, NUMBERS),
                                 height=pick(rng, NUMBERS), do_rectify=False) for _ in range(int(rng.integers(0, 3)))]
        levels = bytes(int(v) for v in rng.integers(0, 9, int(rng.integers(0, 4))))
        yield SimpleNamespace(prompt_id=pick(rng, NUMBERS + [-5]), points=points, boxes=boxes,
                              levels=pick(rng, [levels, [1, "x"], levels]), text="a" * int(rng.integers(0, 50)),
                              sticky=bool(rng.integers(2)), track=bool(rng.integers(2)),
                              camera=pick(rng, ["", "head", "x" * 300]), header=stamp)


def camera_infos(rng: np.random.Generator):
    models = ["plumb_bob", "rational_polynomial", "equidistant", "kannala_brandt_9", ""]
    for _ in range(CASES):
        fx, fy = (pick(rng, FLOATS + [500.0] * 6) for _ in range(2))
        k = [fx, 0.0, pick(rng, FLOATS + [320.0] * 4), 0.0, fy, 240.0, 0.0, 0.0, pick(rng, [1.0] * 6 + FLOATS)]
        d = [pick(rng, FLOATS + [0.01, -0.3, 0.0, 0.0]) for _ in range(int(rng.integers(0, 10)))]
        size = [pick(rng, NUMBERS + [4096, 3072, 640, 480]) for _ in range(2)]
        yield SimpleNamespace(k=pick(rng, [k] * 5 + [k[:4]]), d=d, distortion_model=pick(rng, models),
                              width=size[0], height=size[1], p=[0.0] * 12)


def _click(info) -> None:
    camera = CameraModel.from_camera_info(info)
    try:  # a click: projecting a point is answered or refused (off the image, behind the camera) as ValueError
        project_point([0.1, -0.05, 2.0], camera)
    except InputRejected:
        raise
    except ValueError as exc:
        assert "outside" in str(exc) or "behind" in str(exc), exc


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path, fn, inputs", [
    ("image", image_to_rgb, raw_images),
    ("depth", image_to_depth, raw_images),
    ("compressed", image_to_rgb, compressed_images),
    ("prompt", prompt_from_msg, prompts),
    ("camera_info", _click, camera_infos),
])
def test_every_input_is_accepted_or_rejected_by_cause(path, fn, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcomes = check(fn, inputs(np.random.default_rng(18)))
    assert sum(outcomes.values()) == CASES
    assert outcomes.get("accepted", 0) > 0 and len(outcomes) > 1, outcomes  # the fuzz reaches both sides
