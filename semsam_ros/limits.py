"""The input policy: size caps checked before any work, and the one error every rejected input raises.

A rejection is an :class:`InputRejected` (a ValueError) whose ``cause`` names the problem in a word; the node's
diagnostics and the bag summary count errors by that cause. Torch-free.
"""
from __future__ import annotations

from semsam_ros.types import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_LONG_SIDE

CAUSES: tuple[str, ...] = (
    "too_large",  # more pixels than max_image_pixels (read from the header, nothing decoded)
    "too_long",  # encoder input long side over max_long_side (extreme aspect ratio or input size)
    "unsupported_encoding",
    "malformed",  # sizes, steps and data length that do not agree; an empty image
    "undecodable",  # compressed bytes that the codec refuses
    "bad_camera_info",
    "bad_prompt",
)


class InputRejected(ValueError):
    """An input refused by the policy; ``cause`` is one of :data:`CAUSES`."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


def check_pixels(width: int, height: int, what: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """InputRejected ("malformed" or "too_large") unless 0 < width, height and width * height <= max_pixels."""
    if width <= 0 or height <= 0:
        raise InputRejected(f"empty image ({what}, {width}x{height})", "malformed")
    if width * height > max_pixels:
        raise InputRejected(
            f"{what} of {width}x{height} = {width * height} pixels is over the limit of {max_pixels} "
            "(parameter max_image_pixels)", "too_large")


def encoder_long_side(height: int, width: int, short_side: int) -> int:
    """Long side of an image of (height, width) once its short side is resized to ``short_side``."""
    return int(short_side * max(height, width) / min(height, width))


def check_long_side(height: int, width: int, short_side: int, max_long_side: int = DEFAULT_MAX_LONG_SIDE) -> None:
    """InputRejected ("too_long") when the encoder input of a (height, width) image would exceed max_long_side."""
    long_side = encoder_long_side(height, width, short_side)
    if long_side > max_long_side:
        raise InputRejected(
            f"a {width}x{height} image (aspect ratio {max(height, width) / min(height, width):.2f}) at input size "
            f"{short_side} gives an encoder long side of {long_side} pixels, over the limit of {max_long_side} "
            "(parameter max_long_side; or crop the image / lower the input size)", "too_long")
