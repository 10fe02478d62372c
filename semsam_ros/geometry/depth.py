"""Depth images to metres: the one depth-encoding policy of the package (``ros.images.image_to_depth`` uses it).

16UC1 and mono16 are millimetres, 32FC1 is metres. 0, NaN, inf and values outside [min_m, max_m] are invalid and
become NaN. Depth must be registered to the colour image (same size, same camera); a size mismatch is an error,
never a silent resize. docs/geometry.md ("Depth rules") is where the policy is documented.
"""
from __future__ import annotations

import numpy as np

DEFAULT_MIN_DEPTH_M = 0.05
DEFAULT_MAX_DEPTH_M = 10.0
MILLIMETRE_ENCODINGS = ("16UC1", "mono16")
METRE_ENCODINGS = ("32FC1",)
DEPTH_ENCODINGS = MILLIMETRE_ENCODINGS + METRE_ENCODINGS


def depth_to_meters(
    depth: np.ndarray,
    encoding: str | None = None,
    *,
    min_m: float = DEFAULT_MIN_DEPTH_M,
    max_m: float = DEFAULT_MAX_DEPTH_M,
    image_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """(H, W) float32 metres with NaN where invalid.

    ``encoding`` is the sensor_msgs/Image encoding; None infers it from the dtype (uint16: mm, float: m).
    ``image_shape`` is the (H, W[, C]) of the colour image the depth must be registered to.
    """
    if not 0 < min_m < max_m:
        raise ValueError(f"need 0 < min_m < max_m, got min_m={min_m}, max_m={max_m}")
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2:
        raise ValueError(f"depth must be a single-channel (H, W) image, got shape {depth.shape}")
    if image_shape is not None and tuple(image_shape[:2]) != depth.shape:
        raise ValueError(
            f"depth image is {depth.shape[1]}x{depth.shape[0]} but the colour image is "
            f"{image_shape[1]}x{image_shape[0]}: depth must be registered (aligned) to the colour image, "
            "e.g. the camera driver's aligned_depth_to_color topic; it is never resized here"
        )
    if encoding is None:
        encoding = "16UC1" if depth.dtype == np.uint16 else "32FC1" if depth.dtype.kind == "f" else ""
    if encoding in MILLIMETRE_ENCODINGS:
        if depth.dtype != np.uint16:
            raise ValueError(f"{encoding} depth must be uint16 millimetres, got {depth.dtype}")
        metres = depth.astype(np.float32)
        metres *= np.float32(0.001)
    elif encoding in METRE_ENCODINGS:
        if depth.dtype.kind != "f":
            raise ValueError(f"{encoding} depth must be floating-point metres, got {depth.dtype}")
        metres = depth.astype(np.float32, copy=True)
    else:
        raise ValueError(
            f"unsupported depth encoding {encoding!r} (dtype {depth.dtype}); use 16UC1 or mono16 (mm), or 32FC1 (m)"
        )
    with np.errstate(invalid="ignore"):
        metres[~((metres >= min_m) & (metres <= max_m))] = np.nan
    return metres
