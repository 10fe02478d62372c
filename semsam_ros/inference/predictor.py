"""Predictor: encode an image once, then decode any number of point and box prompts against it."""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..config import ModelConfig
from ..limits import check_long_side
from ..model.pixel_decoder import GN_GROUPS
from ..types import DEFAULT_MAX_LONG_SIDE, LEVELS, outside_image
from ..model.semantic_sam import SemanticSam
from .backends import Backend, ImageUploader, create_backend

POINT_BOX_SIZE = 0.005  # a click is the tiny box [x/W, y/H, 0.005, 0.005], as in the official predictor
PROMPT_TYPE = 0  # point/box embedding row used by the official inference for clicks and boxes
DEFAULT_SHORT_SIDE = 640
MIN_SHORT_SIDE = 32
IMAGE_FORMATS = ("RGB", "BGR")


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the short side set to ``short_side`` and the long side truncated, as torchvision's Resize."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def padded_shape(height: int, width: int, short_side: int, divisibility: int = 32) -> tuple[int, int]:
    """(Hp, Wp) of the model input for an image of (height, width): resized as :func:`resized_shape`, padded."""
    h, w = resized_shape(height, width, short_side)
    return -(-h // divisibility) * divisibility, -(-w // divisibility) * divisibility


def min_short_side(config: ModelConfig) -> int:
    """Smallest ``short_side`` at which every image runs (a square one is the worst case).

    The padded input reaches the pixel decoder's coarsest map (the stride-2 conv after the backbone's last stage,
    stride ``patch_size * 2**stages``) as ceil(padded / stride) per side; its GroupNorm needs more than one value
    per group, i.e. ``conv_dim / 32`` channels times that map's pixels above 1.
    """
    div, stride = config.size_divisibility, config.patch_size * 2 ** len(config.depths)
    per_group = config.conv_dim // GN_GROUPS

    def coarsest_side(short_side: int) -> int:
        return -(-(-(-short_side // div) * div) // stride)

    return next(s for s in count(MIN_SHORT_SIDE) if per_group * coarsest_side(s) ** 2 > 1)


def check_levels(levels: Iterable[int] | None) -> tuple[int, ...]:
    """``levels`` as a tuple (None: all six), in the order given; ValueError unless distinct levels of 1..6."""
    if levels is None:
        return LEVELS
    out = tuple(int(level) for level in levels)
    if not out or len(set(out)) != len(out) or not set(out) <= set(LEVELS):
        raise ValueError(f"levels must be distinct values of {LEVELS} (at least one), got {out}")
    return out


def check_point_labels(point_labels: Any, points: Any) -> None:
    """Accept only all-foreground labels: each point is its own prompt, there are no negative or multi-click ones."""
    if point_labels is None:
        return
    labels = np.asarray(point_labels).reshape(-1)
    n_points = len(_as_prompt_array(points, 2, "points"))
    if labels.size != n_points:
        raise ValueError(f"point_labels has {labels.size} entries for {n_points} points")
    if not (labels == 1).all():
        raise ValueError(
            "point_labels must all be 1 (foreground): Semantic-SAM has no negative or multi-click prompts, "
            "each point is its own prompt"
        )


def to_rgb(image: np.ndarray, image_format: str) -> np.ndarray:
    """A validated image (:func:`check_image`) in RGB channel order; ``image_format`` is "RGB" or "BGR"."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    image = check_image(image)
    return np.ascontiguousarray(image[..., ::-1]) if image_format == "BGR" else image


def resize_image(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize with PIL bicubic (the official preprocessing); returned unchanged when already at size."""
    h, w = image.shape[:2]
    new_h, new_w = resized_shape(h, w, short_side)
    if (new_h, new_w) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))


def check_image(image: Any) -> np.ndarray:
    """Validate an HxWx3 uint8 RGB array; raise ValueError naming the problem."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array (HxWx3 uint8 RGB), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 RGB, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    return np.ascontiguousarray(image)


def _as_prompt_array(values: Any, columns: int, what: str) -> np.ndarray:
    arr = np.zeros((0, columns)) if values is None else np.asarray(values, dtype=np.float64)
    if arr.ndim == 1 and arr.size == columns:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != columns:
        raise ValueError(f"{what} must have shape (N, {columns}), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return arr


def prompts_to_boxes(points: Any, boxes: Any, height: int, width: int) -> np.ndarray:
    """Pixel points (P, 2) and XYXY boxes (B, 4) -> (P+B, 4) relative [cx, cy, w, h]; raises on bad prompts."""
    pts = _as_prompt_array(points, 2, "points")
    bxs = _as_prompt_array(boxes, 4, "boxes")
    bad_points, bad_boxes = outside_image(pts, bxs, height, width)
    if bad_points.any():
        bad = pts[bad_points][0]
        raise ValueError(f"point ({bad[0]:g}, {bad[1]:g}) is outside the {width}x{height} image")
    x0, y0, x1, y1 = bxs.T
    if ((x1 <= x0) | (y1 <= y0)).any():
        raise ValueError("boxes must be X0,Y0,X1,Y1 with X1 > X0 and Y1 > Y0")
    if bad_boxes.any():
        raise ValueError(f"a box reaches outside the {width}x{height} image")
    size = np.array([width, height], dtype=np.float64)
    rel_points = np.concatenate([pts / size, np.full_like(pts, POINT_BOX_SIZE)], axis=1)
    rel_boxes = np.concatenate([(bxs[:, :2] + bxs[:, 2:]) / 2 / size, (bxs[:, 2:] - bxs[:, :2]) / size], axis=1)
    return np.concatenate([rel_points, rel_boxes]).astype(np.float32)


@dataclass
class ImageEmbedding:
    """Everything the prompt decoder needs about one image."""

    mask_features: Tensor  # (1, C, Hp/4, Wp/4)
    values: Tensor  # (1, decoder layers, heads, C/heads, S)
    original_size: tuple[int, int]  # (H, W) of the image given to set_image / encode
    resized_size: tuple[int, int]  # (h, w) after the short-side resize, before padding
    padded_size: tuple[int, int]  # (Hp, Wp) of the model input

    @property
    def input_size(self) -> tuple[int, int]:
        """Deprecated name of :attr:`resized_size`."""
        warnings.warn("ImageEmbedding.input_size is deprecated: use resized_size", DeprecationWarning, stacklevel=2)
        return self.resized_size


@dataclass
class Prediction:
    """Per prompt (points first, then boxes), one column per level of ``levels``, in that order."""

    mask_logits: np.ndarray  # float32 (N, L, H, W)
    iou_scores: np.ndarray  # float32 (N, L), raw IoU-head outputs
    levels: tuple[int, ...] = LEVELS

    @property
    def masks(self) -> np.ndarray:
        return self.mask_logits > 0


class Predictor:
    """SamPredictor-style API: ``set_image`` once (the image encoder runs), then ``predict`` per prompt batch.

    ``short_side`` (default 640) is the image's short side given to the encoder; it must be at least
    :func:`min_short_side` of the model. ``backend`` ("eager", "compile", "tensorrt", or a
    :class:`~semsam_ros.inference.backends.Backend`) and ``precision`` ("fp32", "fp16", "bf16") choose how the
    model runs; ``cache_dir`` is where TensorRT engines are kept. ``input_size`` is the deprecated name of
    ``short_side``.
    """

    def __init__(
        self,
        model: SemanticSam,
        device: str | torch.device = "cpu",
        short_side: int | None = None,
        *,
        backend: str | Backend = "eager",
        precision: str = "fp32",
        cache_dir: str | Path | None = None,
        max_long_side: int = DEFAULT_MAX_LONG_SIDE,
        input_size: int | None = None,
    ) -> None:
        if input_size is not None:
            if short_side is not None:
                raise TypeError("give short_side or its deprecated alias input_size, not both")
            warnings.warn("Predictor(input_size=) is deprecated: use short_side=", DeprecationWarning, stacklevel=2)
            short_side = input_size
        short_side = DEFAULT_SHORT_SIDE if short_side is None else short_side
        smallest = min_short_side(model.config)
        if short_side < smallest:
            raise ValueError(
                f"short_side={short_side} is too small for model {model.config.name!r}: the smallest usable value "
                f"is {smallest}"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.short_side = short_side
        self.max_long_side = max_long_side
        if isinstance(backend, Backend):
            if backend.device.type != self.device.type:
                raise ValueError(f"the backend runs on {backend.device}, the predictor on {self.device}")
            self.backend = backend
        else:
            options = {"cache_dir": cache_dir} if backend == "tensorrt" else {}
            self.backend = create_backend(backend, self.model, self.device, precision, **options)
        self._upload = ImageUploader(self.device)
        self.embedding: ImageEmbedding | None = None

    @property
    def input_size(self) -> int:
        """Deprecated name of :attr:`short_side`."""
        warnings.warn("Predictor.input_size is deprecated: use short_side", DeprecationWarning, stacklevel=2)
        return self.short_side

    def prepare(self, image_size: tuple[int, int]) -> None:
        """Build or load what the backend needs for images of ``image_size`` (H, W) before the first frame
        (TensorRT engines, compiled graphs, CUDA graphs)."""
        self.backend.prepare(padded_shape(*image_size, self.short_side, self.model.config.size_divisibility))

    @torch.inference_mode()
    def encode(self, image: np.ndarray, image_format: str = "RGB") -> ImageEmbedding:
        """Run the image encoder on an HxWx3 uint8 image (any size; short side resized to ``short_side``, long side
        at most ``max_long_side`` after that)."""
        return self.encode_batch([image], image_format)[0]

    @torch.inference_mode()
    def encode_batch(self, images: Sequence[np.ndarray], image_format: str = "RGB") -> list[ImageEmbedding]:
        """:meth:`encode` of several images (e.g. one per camera), in order, each equal to encoding it alone.

        Images of one padded size go through the encoder together: one call per padded size (split into calls of
        at most ``backend.encoder_batch`` images for backends built at a fixed batch).
        """
        inputs = [self._model_input(image, image_format) for image in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (_, _, x) in enumerate(inputs):
            groups.setdefault((int(x.shape[2]), int(x.shape[3])), []).append(i)
        embeddings: list[ImageEmbedding | None] = [None] * len(inputs)
        step = self.backend.encoder_batch or len(inputs)
        for padded, group in groups.items():
            for start in range(0, len(group), step):
                chunk = group[start : start + step]
                mask_features, values = self.backend.image_encoder(torch.cat([inputs[i][2] for i in chunk]))
                for j, i in enumerate(chunk):
                    original, resized, _ = inputs[i]
                    embeddings[i] = ImageEmbedding(
                        mask_features[j : j + 1], values[j : j + 1], original, resized, padded
                    )
        return embeddings  # type: ignore[return-value]  (every index is in one group)

    def _model_input(self, image: np.ndarray, image_format: str) -> tuple[tuple[int, int], tuple[int, int], Tensor]:
        """(original size, resized size, the normalised padded (1, 3, Hp, Wp) input on the device) of an image."""
        image = to_rgb(image, image_format)
        check_long_side(*image.shape[:2], self.short_side, self.max_long_side)
        resized = resize_image(image, self.short_side)
        tensor = self._upload(np.require(resized, requirements=["C", "W"])).permute(2, 0, 1)
        return image.shape[:2], resized.shape[:2], self.model.preprocess(tensor)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode ``image`` (HxWx3 uint8, ``image_format`` "RGB" or "BGR") and make it the current image."""
        self.set_embedding(self.encode(image, image_format))

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        self.embedding = embedding

    def reset_image(self) -> None:
        """Forget the current image: ``predict`` raises until the next ``set_image`` / ``set_embedding``."""
        self.embedding = None

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the image given to ``set_image``."""
        return self._require_embedding().original_size

    def _require_embedding(self) -> ImageEmbedding:
        if self.embedding is None:
            raise RuntimeError("no image set: call set_image(image) before predict")
        return self.embedding

    @torch.inference_mode()
    def predict_lowres(
        self, points: Any = None, boxes: Any = None, levels: Iterable[int] | None = None, *, point_labels: Any = None
    ) -> tuple[Tensor, Tensor]:
        """Stride-4 logits of the padded canvas (N, L, Hp/4, Wp/4) and IoU scores (N, L), not upsampled.

        One column per level of ``levels`` (None: 1..6), in the order given; arguments as :meth:`predict`.
        """
        emb = self._require_embedding()
        columns = [level - 1 for level in check_levels(levels)]
        rel = prompts_to_boxes(points, boxes, *emb.original_size)
        check_point_labels(point_labels, points)
        lowres, ious = self.decode_boxes(torch.from_numpy(rel))
        if columns == list(range(len(LEVELS))):
            return lowres, ious
        index = torch.tensor(columns, device=lowres.device)
        return lowres.index_select(1, index), ious.index_select(1, index)

    @torch.inference_mode()
    def decode_boxes(self, rel_boxes: Tensor) -> tuple[Tensor, Tensor]:
        """Decode (N, 4) boxes [cx, cy, w, h] relative to the image (a click: [x/W, y/H, 0.005, 0.005])."""
        emb = self._require_embedding()
        (h, w), (hp, wp) = emb.resized_size, emb.padded_size
        # rescale into the padded frame in float32, multiplying first, as the official evaluate_demo
        size = torch.tensor([w, h, w, h], dtype=torch.float32)
        padded = rel_boxes.to(torch.float32) * size / torch.tensor([wp, hp, wp, hp], dtype=torch.float32)
        pb = torch.full((len(padded),), PROMPT_TYPE, dtype=torch.long, device=self.device)
        if len(padded) == 0:
            _, _, h4, w4 = emb.mask_features.shape
            empty = emb.mask_features.new_zeros((0, len(LEVELS)))
            return empty.new_zeros((0, len(LEVELS), h4, w4)), empty
        return self.backend.prompt_decoder(padded.to(self.device), pb, emb.mask_features, emb.values)

    @torch.inference_mode()
    def upsample_logits(self, lowres: Tensor) -> Tensor:
        """(..., Hp/4, Wp/4) stride-4 logits -> (..., H, W) at the resolution of the image given to set_image.

        Bilinear x4 to the padded canvas, crop to the resized image (the official evaluate_demo output), then,
        only if set_image resized the image, bilinear to its original size.
        """
        emb = self._require_embedding()
        lead = lowres.shape[:-2]
        if lowres.numel() == 0:
            return lowres.new_zeros((*lead, *emb.original_size))
        # one map per batch item: a map's result then never depends on how many are upsampled with it
        x = lowres.reshape(-1, 1, *lowres.shape[-2:]).float()
        x = F.interpolate(x, size=emb.padded_size, mode="bilinear", align_corners=False)
        x = x[..., : emb.resized_size[0], : emb.resized_size[1]]
        if emb.resized_size != emb.original_size:
            x = F.interpolate(x, size=emb.original_size, mode="bilinear", align_corners=False)
        return x.reshape(*lead, *x.shape[-2:])

    def predict(
        self, points: Any = None, boxes: Any = None, levels: Iterable[int] | None = None, *, point_labels: Any = None
    ) -> Prediction:
        """Masks for pixel points (P, 2) and pixel XYXY boxes (B, 4); each prompt independent of the others.

        ``levels``: which granularity levels to return (None: all six), in that order; only those are upsampled.
        ``point_labels`` (P,) is accepted for SamPredictor compatibility and must be all 1 (foreground).
        """
        levels = check_levels(levels)
        lowres, ious = self.predict_lowres(points, boxes, levels, point_labels=point_labels)
        logits = self.upsample_logits(lowres)
        return Prediction(logits.cpu().numpy(), ious.float().cpu().numpy(), levels)
