"""Synthetic sequences for the tracking tests: rendered frames with ground-truth labels per level, and an oracle
predictor that answers a prompt with the ground-truth mask of what it falls on, at each level asked."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from semsam_ros.geometry import CameraModel

OBJECT, PART = 0, 1  # the two label images: levels 1-3 see objects, levels 4-6 parts (an object without parts)


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """HxWx3 uint8 background with structure at several scales (for phase correlation to lock on)."""
    rng = np.random.default_rng(seed)
    coarse = np.kron(rng.uniform(40, 200, (height // 8 + 1, width // 8 + 1, 3)), np.ones((8, 8, 1)))
    fine = rng.uniform(-30, 30, (height, width, 3))
    return np.clip(coarse[:height, :width] + fine, 0, 255).astype(np.uint8)


def disc(shape: tuple[int, int], cx: float, cy: float, r: float, r_in: float = 0.0) -> np.ndarray:
    """A bool disc (a ring when ``r_in`` > 0) of an image of ``shape``."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    d2 = (xs - cx) ** 2 + (ys - cy) ** 2
    return (d2 <= r * r) & (d2 >= r_in * r_in)


def rect(shape: tuple[int, int], x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


@dataclass
class Frame:
    """A rendered frame: RGB, label images (OBJECT, PART; 0 background) and optionally depth in metres."""

    rgb: np.ndarray
    labels: np.ndarray  # (2, H, W) int
    depth: np.ndarray | None = None

    def mask(self, label: int, kind: int = OBJECT) -> np.ndarray:
        return self.labels[kind] == label


@dataclass
class Painter:
    """Paints objects back to front on a background; later ones hide earlier ones."""

    background: np.ndarray
    labels: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.background = self.background.copy()
        self.labels = np.zeros((2, *self.background.shape[:2]), dtype=np.int32)

    def paint(self, label: int, mask: np.ndarray, colour: Sequence[int],
              parts: Sequence[tuple[int, np.ndarray, Sequence[int]]] = ()) -> "Painter":
        self.background[mask] = colour
        self.labels[:, mask] = label
        for part_label, part, part_colour in parts:
            self.background[part & mask] = part_colour
            self.labels[PART][part & mask] = part_label
        return self

    def frame(self, depth: np.ndarray | None = None) -> Frame:
        return Frame(self.background, self.labels, depth)


class Oracle:
    """A predictor that knows the truth: for a point, the region of each asked level's label image holding it;
    for a box, the label covering most of it. Scores 0.9; background is a region too (label 0)."""

    def __init__(self) -> None:
        self.frame: Frame | None = None
        self.calls = 0

    def show(self, frame: Frame) -> None:
        self.frame = frame

    def set_image(self, image: np.ndarray) -> None:
        assert image is self.frame.rgb, "show() the frame before giving its image"

    def predict(self, points=None, boxes=None, levels=(1, 2, 3, 4, 5, 6)) -> SimpleNamespace:
        self.calls += 1
        points = np.zeros((0, 2)) if points is None else np.asarray(points).reshape(-1, 2)
        boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes).reshape(-1, 4)
        height, width = self.frame.labels.shape[1:]
        logits = np.full((len(points) + len(boxes), len(levels), height, width), -5.0, np.float32)
        for i, prompt in enumerate([*points, *boxes]):
            for j, level in enumerate(levels):
                labels = self.frame.labels[OBJECT if level <= 3 else PART]
                if len(prompt) == 2:
                    label = labels[int(round(prompt[1])), int(round(prompt[0]))]
                else:
                    x0, y0, x1, y1 = (int(round(v)) for v in prompt)
                    label = np.bincount(labels[y0:y1, x0:x1].ravel()).argmax()
                logits[i, j][labels == label] = 5.0
        return SimpleNamespace(mask_logits=logits, iou_scores=np.full(logits.shape[:2], 0.9, np.float32),
                               levels=tuple(levels))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


FX, Z_OBJECT, Z_WALL, RADIUS_M = 300.0, 1.0, 20.0, 0.08


def camera_sequence():
    """A camera translating along x in front of a disc at 1 m and a textured wall at 20 m; at frame 10 it jumps
    by 1/3 m: the disc jumps 100 px in the image, the wall 5 px. Returns frames, poses, truth and the camera."""
    big, h, w = texture(400, 400, seed=3), 240, 320
    camera = CameraModel([[FX, 0, w / 2], [0, FX, h / 2], [0, 0, 1]], w, h)
    ys, xs = np.mgrid[:h, :w]
    frames, poses, truth = [], [], []
    for f in range(20):
        cam_x = -0.3 + 0.01 * f + (1 / 3 if f >= 10 else 0.0)
        on_disc = ((xs - w / 2) / FX * Z_OBJECT + cam_x) ** 2 + ((ys - h / 2) / FX * Z_OBJECT) ** 2 <= RADIUS_M ** 2
        wall = big[((ys - h / 2) / FX * Z_WALL / 0.1).astype(int) % 400,
                   (((xs - w / 2) / FX * Z_WALL + cam_x) / 0.1).astype(int) % 400]
        paint = Painter(wall).paint(1, on_disc, (220, 60, 60))
        frames.append(paint.frame(np.where(on_disc, Z_OBJECT, Z_WALL).astype(np.float32)))
        pose = np.eye(4)
        pose[0, 3] = cam_x
        poses.append(pose)
        truth.append(on_disc)
    return frames, poses, truth, camera
