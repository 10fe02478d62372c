"""Benchmark: 3D for 20 masks on a 640x480 16UC1 depth image on one CPU core. Prints JSON (times in ms).

Scene: a table plane seen from 30 degrees above with 19 boxes of 4-10 cm on it at 0.5-1.3 m, f = 525 px,
depth noise 1.5 mm * z^2, 2% holes; the 20 masks are the 19 boxes and the table (about half the image). The masks
are exact; ``bleeding`` figures grow the box masks by 2 pixels onto the table and what lies behind, as a
segmenter's masks or a registered depth image's misalignment do, so that the outlier rule cuts links.
Usage: python3 bench/geometry.py [--repeats 50]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))

import geometry_scenes as gs  # noqa: E402

from semsam_ros.geometry import CameraModel, depth_to_meters, segments_cloud, segments_to_3d  # noqa: E402
from semsam_ros.types import make_segment  # noqa: E402

WIDTH, HEIGHT = 640, 480
K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])


def make_scene(seed: int = 0) -> tuple[np.ndarray, list]:
    """16UC1 depth (mm) and 20 Segments: 19 boxes on a table plus the table."""
    rng = np.random.default_rng(seed)
    rays = gs.pixel_rays(K, WIDTH, HEIGHT)
    pitch = np.deg2rad(30.0)
    up = np.array([0.0, -np.cos(pitch), -np.sin(pitch)])  # table normal in the optical frame
    forward = np.array([0.0, -np.sin(pitch), np.cos(pitch)])  # along the table, away from the camera
    right = np.cross(forward, up)
    table_point = np.array([0.0, 0.0, 1.0])  # where the optical axis meets the table
    shapes = [gs.hit_rectangle(rays, table_point, right, forward, 0.8, 0.6)]
    for i in range(19):  # one box per cell of a 5 x 4 grid on the table, so that none hides another
        half = rng.uniform(0.02, 0.05, 3)
        spot = table_point + (-0.36 + 0.24 * (i // 5)) * forward
        spot += 0.19 * spot[2] * (i % 5 - 2) * right
        rot = np.column_stack([right, forward, up]) @ gs.rotation(np.array([0.0, 0.0, 1.0]), rng.uniform(0, np.pi))
        shapes.append(gs.hit_box(rays, spot + half[2] * up, rot, half))
    depth, label = gs.compose(*shapes)
    depth = depth + rng.normal(0.0, 0.0015, depth.shape) * depth**2
    depth[rng.random(depth.shape) < 0.02] = 0.0
    depth_mm = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
    segments = [make_segment(label == i, level=3, iou_score=1.0, id=i) for i in range(len(shapes))]
    return depth_mm, segments


def median_ms(fn, repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time of this thread (the latter ignores time the OS gave to others)."""
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append((time.thread_time() - c0) * 1e3)
        wall.append((time.perf_counter() - w0) * 1e3)
    return float(np.median(wall)), float(np.median(cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    depth_mm, segments = make_scene()
    camera = CameraModel(K, WIDTH, HEIGHT)
    camera.rays  # built once per camera, as the node does on its first camera_info
    depth_m = depth_to_meters(depth_mm, "16UC1")
    results = segments_to_3d(segments, depth_m, camera)
    depth_ms, depth_cpu = median_ms(lambda: depth_to_meters(depth_mm, "16UC1"), args.repeats)
    masks_ms, masks_cpu = median_ms(lambda: segments_to_3d(segments, depth_m, camera), args.repeats)
    total_ms, total_cpu = median_ms(
        lambda: segments_to_3d(segments, depth_to_meters(depth_mm, "16UC1"), camera), args.repeats
    )
    bleeding = [segments[0]] + [make_segment(ndimage.binary_dilation(s.mask, iterations=2), level=3, iou_score=1.0,
                                             id=s.id) for s in segments[1:]]
    bleeding_ms, bleeding_cpu = median_ms(
        lambda: segments_to_3d(bleeding, depth_to_meters(depth_mm, "16UC1"), camera), args.repeats
    )
    cloud_ms, _ = median_ms(
        lambda: segments_cloud(segments, segments_to_3d(segments, depth_m, camera, return_points=True)),
        max(3, args.repeats // 5),
    )
    print(json.dumps({
        "benchmark": "geometry: depth_to_meters + segments_to_3d, 20 masks, 640x480, one CPU core",
        "masks": len(segments),
        "mask_areas_px": sorted(s.area for s in segments),
        "valid_3d": sum(r.valid for r in results),
        "median_ms_total": round(total_ms, 3),
        "median_cpu_ms_total": round(total_cpu, 3),
        "median_ms_depth_to_meters": round(depth_ms, 3),
        "median_cpu_ms_depth_to_meters": round(depth_cpu, 3),
        "median_ms_20_masks": round(masks_ms, 3),
        "median_cpu_ms_20_masks": round(masks_cpu, 3),
        "median_ms_total_bleeding_masks": round(bleeding_ms, 3),
        "median_cpu_ms_total_bleeding_masks": round(bleeding_cpu, 3),
        "median_ms_20_masks_with_points_and_cloud": round(cloud_ms, 3),
        "target_ms": 5.0,
        "meets_target": max(total_ms, bleeding_ms) <= 5.0,
        "repeats": args.repeats,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }, indent=2))


if __name__ == "__main__":
    main()
