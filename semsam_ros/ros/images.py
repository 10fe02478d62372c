"""sensor_msgs/Image and CompressedImage <-> numpy, for every common encoding, without cv_bridge.

Works on rclpy and rosbags messages alike (only attributes are read); ``data`` may be numpy, bytes, bytearray,
memoryview, ``array.array`` or a list. Row padding (``step``) and ``is_bigendian`` are honoured. Every image is
checked against ``max_pixels`` before it is decoded or copied (compressed ones from their header); every refusal
is an :class:`~semsam_ros.limits.InputRejected` with a ``cause``.
"""
from __future__ import annotations

import io
from typing import IO, Any

import numpy as np

from semsam_ros.geometry.depth import DEPTH_ENCODINGS, MILLIMETRE_ENCODINGS, depth_to_meters
from semsam_ros.limits import InputRejected, check_pixels
from semsam_ros.ros.msgtypes import MessageTypes
from semsam_ros.types import DEFAULT_MAX_IMAGE_PIXELS

# encoding -> (dtype, channels); the YUV 4:2:2 encodings carry 2 bytes per pixel.
_LAYOUTS: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "rgba8": ("u1", 4),
    "bgra8": ("u1", 4),
    "mono8": ("u1", 1),
    "8UC1": ("u1", 1),
    "mono16": ("u2", 1),
    "16UC1": ("u2", 1),
    "32FC1": ("f4", 1),
    "yuv422": ("u1", 2),
    "uyvy": ("u1", 2),
    "yuv422_yuy2": ("u1", 2),
    "yuyv": ("u1", 2),
}
_UYVY = ("yuv422", "uyvy")  # U0 Y0 V0 Y1
_YUYV = ("yuv422_yuy2", "yuyv")  # Y0 U0 Y1 V0
_COLOUR = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "mono16") + _UYVY + _YUYV
_CODECS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG"}
_COMPRESSED = ("jpeg", "png", "<pixfmt>; jpeg compressed <pixfmt>", "<pixfmt>; png compressed <pixfmt>")
_COMPRESSED_DEPTH = DEPTH_ENCODINGS + tuple(f"{e}; png compressed" for e in MILLIMETRE_ENCODINGS)


class UnsupportedEncodingError(InputRejected):
    """An image encoding (or CompressedImage format) this module cannot convert as asked; its cause is the
    encoding itself (counted as ``UnsupportedEncodingError/<encoding>``)."""

    def __init__(self, encoding: str, supported: tuple[str, ...]) -> None:
        message = f"unsupported image encoding {encoding!r} (supported: {', '.join(supported)})"
        super().__init__(message, encoding.strip() or "unsupported_encoding")
        self.encoding = encoding


def is_compressed(msg: Any) -> bool:
    """True for a sensor_msgs/CompressedImage (it has ``format`` where Image has ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def _bytes_of(data: Any) -> np.ndarray:
    """``data`` of a message as a flat uint8 array, without copying where possible."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else np.frombuffer(data.tobytes(), np.uint8)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def image_to_array(msg: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Pixels of an Image in its own dtype: HxW (one channel) or HxWxC; YUV 4:2:2 gives HxWx2 raw bytes.

    The result is in native byte order and may be a read-only view of ``msg.data``.
    """
    encoding = msg.encoding.strip()
    if encoding not in _LAYOUTS:
        raise UnsupportedEncodingError(encoding, tuple(_LAYOUTS))
    height, width = int(msg.height), int(msg.width)
    check_pixels(width, height, f"{encoding} image", max_pixels)
    dtype, channels = _LAYOUTS[encoding]
    row_bytes = width * channels * np.dtype(dtype).itemsize
    step = int(msg.step)
    if step < row_bytes:
        raise InputRejected(
            f"image step {step} is shorter than a {width}-pixel {encoding} row ({row_bytes} bytes)", "malformed")
    buf = _bytes_of(msg.data)
    needed = step * (height - 1) + row_bytes
    if buf.size < needed:
        raise InputRejected(
            f"image data too short: {buf.size} bytes for {width}x{height} {encoding} with step {step} "
            f"(need {needed})", "malformed"
        )
    if step == row_bytes:
        rows = buf[: height * row_bytes].reshape(height, row_bytes)
    else:
        rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row_bytes), strides=(step, 1))
        rows = np.ascontiguousarray(rows)
    order = ">" if msg.is_bigendian else "<"
    pixels = rows.view(np.dtype(dtype).newbyteorder(order)).astype(np.dtype(dtype), copy=False)
    return pixels.reshape(height, width) if channels == 1 else pixels.reshape(height, width, channels)


def _yuv422_to_rgb(raw: np.ndarray, luma_first: bool) -> np.ndarray:
    """HxWx2 packed 4:2:2 bytes -> HxWx3 RGB (BT.601, video range, as OpenCV converts it)."""
    height, width = raw.shape[:2]
    if width % 2:
        raise InputRejected(f"a YUV 4:2:2 image needs an even width, got {width}", "malformed")
    quads = raw.reshape(height, width // 2, 4).astype(np.float32)
    if luma_first:
        y0, u, y1, v = (quads[..., i] for i in range(4))
    else:
        u, y0, v, y1 = (quads[..., i] for i in range(4))
    y = np.stack([y0, y1], axis=-1).reshape(height, width) - 16.0
    u = np.repeat(u - 128.0, 2, axis=1)
    v = np.repeat(v - 128.0, 2, axis=1)
    rgb = np.stack(
        [1.164 * y + 1.596 * v, 1.164 * y - 0.391 * u - 0.813 * v, 1.164 * y + 2.018 * u], axis=-1
    )
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _pick_channels(pixels: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    """HxWx3 array of channels ``order`` of ``pixels`` (one per-channel copy: faster than a strided copy)."""
    out = np.empty((*pixels.shape[:2], 3), dtype=pixels.dtype)
    for i, channel in enumerate(order):
        out[..., i] = pixels[..., channel]
    return out


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(grey[..., None], (*grey.shape, 3)))


def _codec(fmt: str) -> str:
    """PIL format name of a CompressedImage ``format`` ('jpeg', 'png', 'rgb8; jpeg compressed bgr8'...)."""
    words = fmt.lower().replace(";", " ").split()
    codecs = [_CODECS[word] for word in words if word in _CODECS]
    if not codecs or "compresseddepth" in words:  # compressedDepth has its own header before the png
        raise UnsupportedEncodingError(fmt, _COMPRESSED)
    return codecs[0]


_KEPT_MODES = ("L", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L")


def decode_file(
    fp: IO[bytes], what: str, formats: list[str] | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    frame: int = 0,
) -> np.ndarray:
    """Pixels of an encoded image (HxW, HxWx3 or HxWx4; uint8 or uint16), its size checked from the header first.

    ``formats`` are PIL format names (None: any PIL reads); ``frame``: which frame of a multi-frame file (an
    animated GIF, APNG or WebP, a multi-page TIFF). InputRejected "too_large" or "undecodable".
    """
    from PIL import Image as PILImage

    try:
        with PILImage.open(fp, formats=formats) as img:  # lazy: reads the header only
            check_pixels(*img.size, what, max_pixels)
            if frame:
                img.seek(frame)
            if img.mode not in _KEPT_MODES:
                img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
            pixels = np.asarray(img)
    except PILImage.DecompressionBombError as exc:
        raise InputRejected(f"{what}: {exc}", "too_large") from None
    except (InputRejected, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001  (whatever a codec raises on hostile bytes means "cannot decode")
        raise InputRejected(f"cannot decode {what}: {type(exc).__name__}: {exc}", "undecodable") from None
    if pixels.dtype.kind in "iu" and pixels.dtype.itemsize > 1:
        pixels = pixels.astype(np.uint16)  # 16-bit PNG: PIL gives int32 ('I') or uint16 ('I;16')
    return pixels


def compressed_to_array(msg: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decoded pixels of a CompressedImage (jpeg or png): HxW, HxWx3 or HxWx4, uint8 or uint16."""
    codec = _codec(msg.format)
    buf = _bytes_of(msg.data)
    if buf.size == 0:
        raise InputRejected(f"empty image (CompressedImage {msg.format!r} with no data)", "malformed")
    return decode_file(io.BytesIO(buf.tobytes()), f"{codec} CompressedImage ({msg.format!r})", [codec], max_pixels)


def pixels_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB of decoded pixels (HxW grey, HxWx3 RGB or HxWx4 RGBA; uint16 is scaled down by 256)."""
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    if pixels.ndim == 2:
        return _grey_to_rgb(pixels)
    return pixels if pixels.shape[2] == 3 else _pick_channels(pixels, (0, 1, 2))


def image_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB of an Image or CompressedImage (mono16 and 16-bit png are scaled down by 256)."""
    if is_compressed(msg):
        return pixels_to_rgb(compressed_to_array(msg, max_pixels))
    encoding = msg.encoding.strip()
    if encoding not in _COLOUR:
        raise UnsupportedEncodingError(encoding, _COLOUR)
    pixels = image_to_array(msg, max_pixels)
    if encoding in _UYVY + _YUYV:
        return _yuv422_to_rgb(pixels, luma_first=encoding in _YUYV)
    if encoding.startswith("bgr"):
        return _pick_channels(pixels, (2, 1, 0))
    return pixels_to_rgb(pixels)


def image_to_depth(msg: Any) -> np.ndarray:
    """HxW float32 depth in metres of a depth Image or a '16UC1; png compressed' CompressedImage.

    The encodings and validity rules are those of ``geometry.depth.depth_to_meters`` (16UC1/mono16 mm, 32FC1 m;
    invalid or out-of-range depth becomes NaN).
    """
    if is_compressed(msg):
        encoding = msg.format.split(";")[0].strip()
        pixels = compressed_to_array(msg) if encoding in MILLIMETRE_ENCODINGS else None
        if pixels is None or pixels.ndim != 2 or pixels.dtype != np.uint16:
            raise UnsupportedEncodingError(msg.format, _COMPRESSED_DEPTH)
    else:
        encoding = msg.encoding.strip()
        if encoding not in DEPTH_ENCODINGS:
            raise UnsupportedEncodingError(encoding, DEPTH_ENCODINGS)
        pixels = image_to_array(msg)
    return depth_to_meters(pixels, encoding)


def array_to_image(types: MessageTypes, pixels: np.ndarray, encoding: str, header: Any) -> Any:
    """sensor_msgs/Image of ``pixels`` (HxW or HxWxC, dtype matching ``encoding``), little-endian, unpadded."""
    if encoding not in _LAYOUTS:
        raise UnsupportedEncodingError(encoding, tuple(_LAYOUTS))
    dtype, channels = _LAYOUTS[encoding]
    pixels = np.asarray(pixels)
    shape_ok = pixels.ndim == 2 if channels == 1 else pixels.ndim == 3 and pixels.shape[2] == channels
    if not shape_ok or pixels.dtype != np.dtype(dtype):
        raise ValueError(
            f"{encoding} needs {np.dtype(dtype).name} pixels with {channels} channel(s), "
            f"got {pixels.dtype.name} of shape {pixels.shape}"
        )
    height, width = pixels.shape[:2]
    data = np.ascontiguousarray(pixels, dtype=np.dtype(dtype).newbyteorder("<"))
    return types.make(
        "sensor_msgs/msg/Image",
        header=header,
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=width * channels * np.dtype(dtype).itemsize,
        data=types.byte_array(data),
    )


def rgb_to_image(types: MessageTypes, rgb: np.ndarray, header: Any) -> Any:
    """rgb8 Image of an HxWx3 uint8 array."""
    return array_to_image(types, rgb, "rgb8", header)


def mono_to_image(types: MessageTypes, mono: np.ndarray, header: Any) -> Any:
    """mono8 Image of an HxW uint8 array."""
    return array_to_image(types, mono, "mono8", header)


def label_image(types: MessageTypes, labels: np.ndarray, header: Any) -> Any:
    """16UC1 Image of HxW segment labels (values 0..65535)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError(f"labels must lie in 0..65535 for 16UC1, got {labels.min()}..{labels.max()}")
    return array_to_image(types, labels.astype(np.uint16, copy=False), "16UC1", header)


def rgb_to_compressed(types: MessageTypes, rgb: np.ndarray, header: Any, codec: str = "jpeg", quality: int = 90) -> Any:
    """sensor_msgs/CompressedImage of an HxWx3 uint8 array, format as image_transport writes it."""
    from PIL import Image as PILImage

    if codec not in ("jpeg", "png"):
        raise ValueError(f"codec must be 'jpeg' or 'png', got {codec!r}")
    out = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(
        out, format=_CODECS[codec], **({"quality": quality} if codec == "jpeg" else {})
    )
    fmt = "rgb8; jpeg compressed bgr8" if codec == "jpeg" else "rgb8; png compressed bgr8"
    data = types.byte_array(out.getvalue())
    return types.make("sensor_msgs/msg/CompressedImage", header=header, format=fmt, data=data)
