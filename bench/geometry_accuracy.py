"""Accuracy of the 3D box against the true geometry of ray-cast tabletop objects. Prints JSON.

Scenes (640x480, f = 525 px): a 12 x 7 x 7.5 cm box turned 30, 45 and 60 degrees on a table and a 4 cm-radius,
12 cm can, seen from 0-75 degrees above the table at 0.3, 1 and 3 m; boxes with thin sides (a 20 x 15 x 3 cm book,
a 30 x 5 x 5 cm bar) and a tall one (16 x 6 x 24 cm) turned 10-80 degrees, seen from 15-60 degrees at 0.5 and 1 m;
exact depth, or depth with noise of
``--noise`` m x z^2. Per object and distance: the worst angle between a box axis and the true axis it matches (the
box's edge; the can's axis) and the worst size error (box: each edge; can: height, the diameter across the view and,
from 30 degrees up, along it).
Usage: python3 bench/geometry_accuracy.py [--noise 0.0015] [--max-points 1024]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))

import geometry_scenes as gs  # noqa: E402

from semsam_ros.geometry import CameraModel, mask_to_3d  # noqa: E402

K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])
CAMERA = CameraModel(K, 640, 480)
RAYS = gs.pixel_rays(K, 640, 480)


BOXES = {"box": gs.BOX_HALF, "book": np.array([0.10, 0.075, 0.015]), "bar": np.array([0.15, 0.025, 0.025]),
         "tall box": np.array([0.08, 0.03, 0.12])}


def errors(shape: str, turn: float, elevation: float, distance: float, noise: float, max_points: int,
           rng: np.random.Generator) -> tuple[float, float]:
    """(worst axis angle in degrees, worst size error in mm) of one scene."""
    half = BOXES.get(shape, gs.BOX_HALF)
    depth, mask, axes = gs.tabletop(RAYS, "can" if shape == "can" else "box", elevation, distance, turn, half)
    depth = depth + rng.normal(0.0, noise, depth.shape).astype(np.float32) * depth**2 if noise else depth
    m = mask_to_3d(mask, depth, CAMERA, max_points=max_points)
    r = m.rotation
    if shape != "can":
        match = [int(np.argmax(np.abs(r[:, i] @ axes))) for i in range(3)]
        return (max(gs.line_angle_deg(r[:, i], axes[:, match[i]]) for i in range(3)),
                1000 * max(abs(m.size[i] - 2 * half[match[i]]) for i in range(3)))
    up = axes[:, 0]
    along = int(np.argmax(np.abs(r.T @ up)))
    across, view = sorted((j for j in range(3) if j != along), key=lambda j: abs(r[2, j]))
    sizes = [abs(m.size[along] - gs.CAN_HEIGHT), abs(m.size[across] - 2 * gs.CAN_RADIUS)]
    if elevation >= 30:
        sizes.append(abs(m.size[view] - 2 * gs.CAN_RADIUS))
    return gs.line_angle_deg(r[:, along], up), 1000 * max(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--noise", type=float, default=0.0, help="depth noise in m at 1 m (grows as z^2)")
    parser.add_argument("--max-points", type=int, default=1024)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    tabletop = ((0.3, 1.0, 3.0), ((0, 15, 30, 45, 60), (75,)))
    others = ((0.5, 1.0), ((15, 30, 45, 60),))
    for shape, turns, (distances, elevation_sets) in (("box", (30, 45, 60), tabletop), ("can", (0,), tabletop),
                                                       *((name, (10, 30, 45, 60, 80), others)
                                                         for name in ("book", "bar", "tall box"))):
        for distance in distances:
            for elevations in elevation_sets:
                worst = [errors(shape, t, e, distance, args.noise, args.max_points, rng)
                         for t in turns for e in elevations]
                rows.append({"object": shape, "distance_m": distance,
                             "elevations_deg": f"{elevations[0]}-{elevations[-1]}",
                             "worst_axis_deg": round(max(w[0] for w in worst), 2),
                             "worst_size_mm": round(max(w[1] for w in worst), 1)})
    print(json.dumps({"benchmark": "geometry accuracy against true object geometry", "noise_m_at_1m": args.noise,
                      "max_points": args.max_points, "targets": {"axis_deg": 3.0, "size_mm": 5.0},
                      "results": rows}, indent=2))


if __name__ == "__main__":
    main()
