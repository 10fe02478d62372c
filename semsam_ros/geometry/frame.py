"""Box axes from the surface: the axes of an object's box, not of its visible points.

The principal axes of the points a camera sees are those of the visible surface, not of the object: a box seen
from above shows its top and two sides, whose spread is 10-45 degrees off the box's edges. The faces themselves
carry the box's axes, in their normals:

* the first axis is the normal of the face at the grasp point (a one-face plane fit, ``grasp.face_normals``),
  refined to the area-weighted mean of the sample normals within ``FACE_ANGLE`` of it (that whole face);
* the other two lie in the plane across it, at the angle that best fits the rest of the surface's normals to a
  right-angled frame: with the normals projected onto that plane as complex numbers c, the angle is
  arg(sum(c^4 / |c|^2)) / 4, exact for any mix of faces at right angles (the 4th power maps directions 90 degrees
  apart onto one) and weighted by area (the normals are cross products of the grid's central differences);
* where the surface shows too little across that plane (one flat face, a disc), the two axes are the principal
  axes of the points projected onto it;
* a second candidate takes the in-plane axes from the outline of the first axis' face instead: the principal axes
  of its area-weighted points (an L x W rectangle's are its edges). ``mask3d`` keeps the candidate whose box is
  smaller: the normals fail where a box's visible sides are thin (a book or a bar seen from above: few side
  normals, most of them blends of two faces, 4-5 degrees off), the outline where its face is seen at a grazing
  angle or is square.
"""
from __future__ import annotations

import numpy as np

MIN_FRAME_STRENGTH = 0.05
"""Below this share of the surface area agreeing on an in-plane angle (or this anisotropy of the face's outline,
for the second candidate), the points' spread sets it instead."""
FACE_ANGLE = np.radians(20.0)
"""Sample normals this close to the grasp point's face normal are taken to be on that face."""


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross products of the columns of (3, N) arrays (several times faster than numpy.cross on (N, 3) rows)."""
    return np.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def cross_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross products of the rows of (G, 3) arrays."""
    return _cross(a.T, b.T).T


def sample_normals(p: np.ndarray, canvas_index: np.ndarray, canvas_shape: tuple[int, int]) -> np.ndarray:
    """(3, N) area-weighted normals of the grid inliers ``p`` (3, N) at flat canvas positions ``canvas_index``
    (row-major order): the cross product of the differences between the inliers right and left of each and below
    and above it (zero where one of the four is not an inlier). Their sign is arbitrary."""
    height, width = canvas_shape
    n = canvas_index.size
    normals = np.zeros_like(p)
    if n < 3:
        return normals
    index = np.full(height * width, -1, dtype=np.intp)
    index[canvas_index] = np.arange(n)
    up, down = (np.take(index, canvas_index[1:-1] + offset) for offset in (-width, width))
    # in row-major order the inliers left and right of inlier i, when there are, are i - 1 and i + 1
    ok = (canvas_index[2:] - canvas_index[:-2] == 2) & (up >= 0) & (down >= 0)
    normals[:, 1:-1] = _cross(p[:, 2:] - p[:, :-2], np.take(p, down, axis=1) - np.take(p, up, axis=1))
    normals[:, 1:-1] *= ok
    return normals


def _dot_per_group(samples: np.ndarray, vectors: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(N,) dot products of the columns of ``samples`` (3, N) with their group's row of ``vectors`` (G, 3), the
    groups being ``sizes`` consecutive columns each."""
    return np.einsum("in,in->n", samples, np.repeat(vectors.T.astype(samples.dtype), sizes, axis=1))


def box_frames(
    first: np.ndarray, points: np.ndarray, normals: np.ndarray, mean: np.ndarray, covariance: np.ndarray,
    sizes: np.ndarray, starts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Two candidates (G, 3, 3) of right-handed frames whose third column is ``first`` (G, 3; unit; refined on its
    face), for the groups of consecutive samples ``points`` (3, N; ``sizes`` of them, from ``starts``) with
    area-weighted ``normals`` (3, N): the first two columns fit the normals to a right-angled frame, or follow the
    outline of ``first``'s face (its area-weighted points' principal axes); where either does not determine them,
    the principal axes across ``first`` of the points' ``covariance`` (G, 3, 3; about their ``mean``, G, 3)."""
    along = _dot_per_group(normals, first, sizes)
    area = np.sqrt(np.einsum("in,in->n", normals, normals))
    on_face = np.abs(along) >= np.cos(FACE_ANGLE) * area
    face = np.add.reduceat(normals * (np.sign(along) * on_face), starts, axis=1).T
    length = np.linalg.norm(face, axis=1, keepdims=True)
    first = np.where(length > 0, face / np.where(length > 0, length, 1.0), first)
    helper = np.where(np.abs(first[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    b1 = cross_rows(first, helper)
    b1 /= np.linalg.norm(b1, axis=1, keepdims=True)
    b2 = cross_rows(first, b1)
    cu = _dot_per_group(normals, b1, sizes)
    cv = _dot_per_group(normals, b2, sizes)
    c2r, c2i = cu * cu - cv * cv, 2 * cu * cv
    inverse = 1 / np.maximum((cu * cu + cv * cv) * area, np.finfo(cu.dtype).tiny)  # c = 0: c^4 = 0
    fourth_r = np.add.reduceat((c2r * c2r - c2i * c2i) * inverse, starts)
    fourth_i = np.add.reduceat(2 * c2r * c2i * inverse, starts)
    strength = np.hypot(fourth_r, fourth_i) / np.maximum(np.add.reduceat(area, starts), np.finfo(area.dtype).tiny)
    angle = np.arctan2(fourth_i, fourth_r) / 4
    c11 = np.einsum("gi,gij,gj->g", b1, covariance, b1)
    c22 = np.einsum("gi,gij,gj->g", b2, covariance, b2)
    c12 = np.einsum("gi,gij,gj->g", b1, covariance, b2)
    spread = np.arctan2(2 * c12, c11 - c22) / 2
    outline, anisotropy = _outline(points, mean, b1, b2, area * on_face, sizes, starts)
    angles = np.stack([np.where(strength >= MIN_FRAME_STRENGTH, angle, spread),
                       np.where(anisotropy >= MIN_FRAME_STRENGTH, outline, spread)])  # (2, G)
    u = np.cos(angles)[..., None] * b1 + np.sin(angles)[..., None] * b2
    from_normals, from_outline = (np.stack([u_k, cross_rows(first, u_k), first], axis=2) for u_k in u)
    return from_normals, from_outline


def _outline(points: np.ndarray, mean: np.ndarray, b1: np.ndarray, b2: np.ndarray, weights: np.ndarray,
             sizes: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Angle from ``b1`` towards ``b2`` (G, 3) of the principal axis of each group's ``weights``-weighted points
    (3, N) in that plane, and the anisotropy of their spread (difference of the two variances over their sum)."""
    x = _dot_per_group(points, b1, sizes)
    x -= np.repeat(np.einsum("gi,gi->g", mean, b1).astype(points.dtype), sizes)  # about the mean: small, exact
    y = _dot_per_group(points, b2, sizes)
    y -= np.repeat(np.einsum("gi,gi->g", mean, b2).astype(points.dtype), sizes)
    terms = np.empty((6, weights.size), dtype=weights.dtype)
    terms[0] = weights
    np.multiply(weights, x, out=terms[1])
    np.multiply(weights, y, out=terms[2])
    np.multiply(terms[1], x, out=terms[3])
    np.multiply(terms[2], y, out=terms[4])
    np.multiply(terms[1], y, out=terms[5])
    total, sx, sy, sxx, syy, sxy = np.add.reduceat(terms, starts, axis=1).astype(np.float64)
    total = np.maximum(total, 1e-300)
    mx, my = sx / total, sy / total
    cxx, cyy, cxy = sxx / total - mx * mx, syy / total - my * my, sxy / total - mx * my
    return np.arctan2(2 * cxy, cxx - cyy) / 2, np.hypot(cxx - cyy, 2 * cxy) / np.maximum(cxx + cyy, 1e-300)
