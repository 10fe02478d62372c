"""sensor_msgs/Image and CompressedImage <-> numpy for every supported encoding."""
from __future__ import annotations

import array
import io
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rosbags")

from semsam_ros.ros.images import (  # noqa: E402
    UnsupportedEncodingError,
    array_to_image,
    image_to_array,
    image_to_depth,
    image_to_rgb,
    label_image,
    mono_to_image,
    rgb_to_compressed,
    rgb_to_image,
)
from semsam_ros.ros.typestore import make_typestore, message_types  # noqa: E402
from semsam_ros.geometry import depth_to_meters  # noqa: E402

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, size=(3, 4), dtype=np.uint8)


@pytest.fixture(scope="module")
def types():
    return message_types("humble")


def make_header(types, sec: int, nanosec: int, frame_id: str):
    stamp = types.make("builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec)
    return types.make("std_msgs/msg/Header", stamp=stamp, frame_id=frame_id)


def raw_image(pixels: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False, data_type=bytes):
    """An rclpy-like Image (plain attributes) whose rows are ``pad`` garbage bytes longer than needed."""
    height, width = pixels.shape[:2]
    rows = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<")).reshape(height, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    raw = padded.tobytes()
    data = {bytes: raw, list: list(raw), array.array: array.array("B", raw), np.ndarray: np.frombuffer(raw, np.uint8)}
    return SimpleNamespace(
        height=height, width=width, encoding=encoding, is_bigendian=int(big_endian),
        step=padded.shape[1], data=data[data_type],
    )


@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize(
    "encoding, pixels, expected",
    [
        ("rgb8", RGB, RGB),
        ("bgr8", RGB[..., ::-1], RGB),
        ("rgba8", np.dstack([RGB, np.full((3, 4), 7, np.uint8)]), RGB),
        ("bgra8", np.dstack([RGB[..., ::-1], np.full((3, 4), 7, np.uint8)]), RGB),
        ("mono8", GREY, np.dstack([GREY] * 3)),
        ("8UC1", GREY, np.dstack([GREY] * 3)),
    ],
)
def test_colour_encodings(encoding, pixels, expected, pad):
    np.testing.assert_array_equal(image_to_rgb(raw_image(pixels, encoding, pad)), expected)


@pytest.mark.parametrize("big_endian", [False, True])
def test_mono16_is_scaled_to_8_bit(big_endian):
    mono16 = GREY.astype(np.uint16) * 257 + 3  # high byte is GREY
    rgb = image_to_rgb(raw_image(mono16, "mono16", pad=2, big_endian=big_endian))
    np.testing.assert_array_equal(rgb, np.dstack([GREY] * 3))


@pytest.mark.parametrize("data_type", [bytes, list, array.array, np.ndarray])
def test_every_data_container(data_type):
    np.testing.assert_array_equal(image_to_rgb(raw_image(RGB, "rgb8", pad=3, data_type=data_type)), RGB)


def yuv_bytes(y: np.ndarray, u: np.ndarray, v: np.ndarray, luma_first: bool) -> np.ndarray:
    """HxWx2 packed 4:2:2 bytes of full-resolution Y and half-width U, V."""
    quads = np.stack([y[:, 0::2], u, y[:, 1::2], v] if luma_first else [u, y[:, 0::2], v, y[:, 1::2]], axis=-1)
    return quads.reshape(y.shape[0], y.shape[1], 2).astype(np.uint8)


@pytest.mark.parametrize(
    "encoding, luma_first", [("yuv422", False), ("uyvy", False), ("yuv422_yuy2", True), ("yuyv", True)]
)
def test_yuv422(encoding, luma_first):
    # black, white, BT.601 video-range red and mid grey, as pixel pairs sharing their chroma
    y = np.array([[16, 16, 235, 235], [81, 81, 126, 126]], np.uint8)
    u = np.array([[128, 128], [90, 128]], np.uint8)
    v = np.array([[128, 128], [240, 128]], np.uint8)
    rgb = image_to_rgb(raw_image(yuv_bytes(y, u, v, luma_first), encoding, pad=4))
    assert rgb.shape == (2, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[0, 2], [255, 255, 255])
    np.testing.assert_allclose(rgb[1, 0], [254, 0, 0], atol=1)
    np.testing.assert_allclose(rgb[1, 3], [128, 128, 128], atol=1)


def test_yuv422_odd_width_is_rejected():
    msg = SimpleNamespace(height=1, width=3, encoding="uyvy", is_bigendian=0, step=6, data=bytes(6))
    with pytest.raises(ValueError, match="even width"):
        image_to_rgb(msg)


@pytest.mark.parametrize("big_endian", [False, True])
def test_depth_16uc1_millimetres(big_endian):
    mm = np.array([[0, 1000, 1500], [65535, 250, 0]], np.uint16)
    expected = np.array([[np.nan, 1.0, 1.5], [np.nan, 0.25, np.nan]], np.float32)  # 65.5 m: beyond 10 m
    for encoding in ("16UC1", "mono16"):  # one policy with geometry.depth_to_meters: both are millimetres
        depth = image_to_depth(raw_image(mm, encoding, pad=6, big_endian=big_endian))
        assert depth.dtype == np.float32
        np.testing.assert_allclose(depth, expected, rtol=1e-6)
        np.testing.assert_array_equal(depth, depth_to_meters(mm, encoding))
    raw = image_to_array(raw_image(mm, "16UC1", big_endian=big_endian))
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, mm)


@pytest.mark.parametrize("big_endian", [False, True])
def test_depth_32fc1_metres(big_endian):
    metres = np.array([[0.0, 1.25, np.nan], [np.inf, -1.0, 3.5], [0.01, 10.0, 12.0]], np.float32)
    depth = image_to_depth(raw_image(metres, "32FC1", pad=4, big_endian=big_endian))
    np.testing.assert_array_equal(depth, np.array([[np.nan, 1.25, np.nan], [np.nan, np.nan, 3.5],
                                                   [np.nan, 10.0, np.nan]], np.float32))
    raw = image_to_array(raw_image(metres, "32FC1", big_endian=big_endian))
    assert raw.dtype == np.float32 and raw[0, 1] == np.float32(1.25)


def test_depth_needs_a_depth_encoding():
    with pytest.raises(UnsupportedEncodingError, match="'rgb8'"):
        image_to_depth(raw_image(RGB, "rgb8"))
    with pytest.raises(UnsupportedEncodingError, match="'16UC1'"):
        image_to_rgb(raw_image(GREY.astype(np.uint16), "16UC1"))


def test_unsupported_encoding_names_it():
    with pytest.raises(UnsupportedEncodingError, match="'bayer_rggb8'") as info:
        image_to_rgb(raw_image(GREY, "bayer_rggb8"))
    assert isinstance(info.value, ValueError) and info.value.encoding == "bayer_rggb8"


@pytest.mark.parametrize(
    "msg, match",
    [
        (SimpleNamespace(height=0, width=0, encoding="rgb8", is_bigendian=0, step=0, data=b""), "empty image"),
        (SimpleNamespace(height=2, width=2, encoding="rgb8", is_bigendian=0, step=6, data=bytes(11)), "too short"),
        (SimpleNamespace(height=2, width=2, encoding="rgb8", is_bigendian=0, step=5, data=bytes(12)), "step 5"),
    ],
)
def test_malformed_images(msg, match):
    with pytest.raises(ValueError, match=match):
        image_to_rgb(msg)


def test_last_row_padding_may_be_missing():
    msg = raw_image(RGB, "rgb8", pad=4)
    msg.data = msg.data[:-4]
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)


def compressed(data: bytes, fmt: str):
    return SimpleNamespace(format=fmt, data=data)


def encode(pixels: np.ndarray, fmt: str, **kwargs) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed bgr8", "bgr8; png compressed bgr8"])
def test_compressed_png_is_exact(fmt):
    np.testing.assert_array_equal(image_to_rgb(compressed(encode(RGB, "PNG"), fmt)), RGB)


def test_compressed_grey_png():
    rgb = image_to_rgb(compressed(encode(GREY, "PNG"), "mono8; png compressed"))
    np.testing.assert_array_equal(rgb, np.dstack([GREY] * 3))


@pytest.mark.parametrize("fmt", ["jpeg", "rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8"])
def test_compressed_jpeg(fmt):
    xs, ys = np.meshgrid(np.arange(0, 64, 4), np.arange(0, 96, 6))
    smooth = np.dstack([xs, ys, np.full((16, 16), 99)]).astype(np.uint8)
    rgb = image_to_rgb(compressed(encode(smooth, "JPEG", quality=95), fmt))
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - smooth).mean() < 2.0


def test_compressed_depth_png_16bit():
    mm = np.array([[0, 1000], [2500, 9999]], np.uint16)
    for fmt in ("16UC1; png compressed ", "mono16; png compressed"):
        depth = image_to_depth(compressed(encode(mm, "PNG"), fmt))
        np.testing.assert_allclose(depth, [[np.nan, 1.0], [2.5, 9.999]], rtol=1e-6)


@pytest.mark.parametrize("fmt", ["16UC1; compressedDepth png", "h264", "rgb8; tiff compressed"])
def test_unsupported_compressed_formats(fmt):
    with pytest.raises(UnsupportedEncodingError, match="unsupported image encoding"):
        image_to_rgb(compressed(encode(RGB, "PNG"), fmt))


def test_corrupt_and_empty_compressed():
    with pytest.raises(ValueError, match="cannot decode JPEG"):
        image_to_rgb(compressed(b"\xff\xd8 not really a jpeg", "jpeg"))
    with pytest.raises(ValueError, match="cannot decode PNG"):
        image_to_rgb(compressed(encode(RGB, "JPEG"), "png"))  # a jpeg claiming to be png
    with pytest.raises(ValueError, match="empty image"):
        image_to_rgb(compressed(b"", "png"))


def test_builders_round_trip_through_cdr(types):
    store = make_typestore("humble")
    header = make_header(types, 3, 4, "cam")
    labels = np.array([[0, 1, 65535], [7, 7, 300]], np.uint16)
    cases = [
        (rgb_to_image(types, RGB, header), image_to_rgb, RGB),
        (mono_to_image(types, GREY, header), image_to_rgb, np.dstack([GREY] * 3)),
        (label_image(types, labels, header), image_to_array, labels),
        (rgb_to_compressed(types, RGB, header, codec="png"), image_to_rgb, RGB),
    ]
    for msg, decode, expected in cases:
        name = msg.__msgtype__
        back = store.deserialize_cdr(store.serialize_cdr(msg, name), name)
        assert back.header.frame_id == "cam" and back.header.stamp.sec == 3
        np.testing.assert_array_equal(decode(back), expected)
    jpeg = rgb_to_compressed(types, RGB, header)
    assert jpeg.format == "rgb8; jpeg compressed bgr8" and image_to_rgb(jpeg).shape == RGB.shape


def test_builder_validation(types):
    header = make_header(types, 0, 0, "")
    with pytest.raises(ValueError, match="rgb8 needs uint8"):
        rgb_to_image(types, RGB.astype(np.float32), header)
    with pytest.raises(ValueError, match="0..65535"):
        label_image(types, np.array([[70000]]), header)
    depth = array_to_image(types, np.array([[1.5, 0.0]], np.float32), "32FC1", header)
    assert depth.step == 8 and depth.is_bigendian == 0
    np.testing.assert_array_equal(image_to_depth(depth), [[1.5, np.nan]])
