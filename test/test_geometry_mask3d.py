"""Per-mask 3D on ray-cast scenes of exactly known geometry: planes, a box, a mug (cylinder) with a torus handle."""
import warnings

import numpy as np
import pytest
from scipy import ndimage

import geometry_scenes as gs
from semsam_ros.geometry import CameraModel, Mask3D, depth_to_meters, mask_to_3d, segments_to_3d, transform
from semsam_ros.geometry.mask3d import matrix_to_quaternion, quaternion_to_matrix
from semsam_ros.types import make_segment

CAM = CameraModel(gs.K, gs.W, gs.H)
RAYS = gs.pixel_rays()


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def angle_deg(a, b):
    """Angle between two lines (sign ignored) in degrees."""
    return float(np.degrees(np.arccos(min(1.0, abs(float(unit(a) @ unit(b)))))))


def scene_rectangle(rays=RAYS, tilt_deg=0.0, distance=0.8):
    """A 0.24 x 0.12 m rectangle at ``distance``, edges rotated 30 deg in the image plane, tilted about its long
    edge, before a wall at 1.2 m. Returns depth (float32 m), mask, centre, long edge, short edge, normal."""
    u = np.array([np.cos(np.pi / 6), np.sin(np.pi / 6), 0.0])
    v = gs.rotation(u, np.radians(tilt_deg)) @ np.array([-np.sin(np.pi / 6), np.cos(np.pi / 6), 0.0])
    center = np.array([0.05, -0.02, distance])
    depth, label = gs.compose(gs.hit_rectangle(rays, center, u, v, 0.12, 0.06),
                              gs.hit_plane(rays, np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, 1.2])))
    normal = -unit(np.cross(u, v)) * np.sign(np.cross(u, v) @ center)
    return depth_to_meters(depth.astype(np.float32)), label == 0, center, u, v, normal


@pytest.fixture(scope="module")
def mug():
    depth, label = gs.render_mug(RAYS)
    return depth, label


# -- planes and boxes -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_points, tol, tol_deg", [(None, 0.001, 0.05), (1024, 0.002, 0.5)])
def test_fronto_parallel_rectangle(max_points, tol, tol_deg):
    depth, mask, center, u, v, normal = scene_rectangle()
    m = mask_to_3d(mask, depth, CAM, max_points=max_points)
    assert m.valid and m.point_count == mask.sum() and m.valid_ratio == 1.0 and m.points is None
    np.testing.assert_allclose(m.box_center, center, atol=tol / 2)
    np.testing.assert_allclose(m.position, center, atol=tol / 2)  # median of a symmetric patch
    np.testing.assert_allclose(m.size, [0.24, 0.12, 0.0], atol=tol)
    assert angle_deg(m.axis, u) < tol_deg and m.axis @ u > 0  # sign rule: largest component positive
    np.testing.assert_allclose(m.normal, [0.0, 0.0, -1.0], atol=1e-4)
    expected = np.column_stack([u, np.cross([0, 0, -1.0], u), [0, 0, -1.0]])
    np.testing.assert_allclose(m.rotation, expected, atol=np.radians(tol_deg))


def test_tilted_rectangle_normal_extent_and_centre():
    depth, mask, center, u, v, normal = scene_rectangle(tilt_deg=50.0)
    m = mask_to_3d(mask, depth, CAM)
    assert normal[2] < 0
    assert angle_deg(m.normal, normal) < 0.1 and m.normal @ normal > 0
    np.testing.assert_allclose(m.size, [0.24, 0.12, 0.0], atol=0.001)
    np.testing.assert_allclose(m.box_center, center, atol=0.0005)
    assert angle_deg(m.axis, u) < 0.2
    assert abs((m.position - center) @ normal) < 1e-4  # the robust centroid lies on the surface


def test_box_seen_from_above_gives_its_top_face():
    """Camera above the box's footprint: only the top face is visible."""
    rot = gs.rotation([0.0, 0.0, 1.0], np.radians(25.0))
    center, half = np.array([0.0, 0.01, 0.7]), np.array([0.1, 0.05, 0.04])
    depth, label = gs.compose(gs.hit_box(RAYS, center, rot, half))
    m = mask_to_3d(label == 0, depth_to_meters(depth.astype(np.float32)), CAM)
    np.testing.assert_allclose(m.box_center, center - [0, 0, 0.04], atol=0.001)
    np.testing.assert_allclose(m.size, [0.2, 0.1, 0.0], atol=0.002)
    assert angle_deg(m.axis, rot[:, 0]) < 0.75 and m.axis @ rot[:, 0] > 0  # pixel grid aliasing: < 1 degree
    np.testing.assert_allclose(m.normal, [0, 0, -1], atol=1e-4)
    np.testing.assert_allclose(m.rotation[:, 1], [rot[1, 0], -rot[0, 0], 0.0], atol=0.015)  # e2 x e0


def test_floor_at_grazing_angle_is_not_cut_by_outlier_rejection():
    """Floor 0.5 m below a level camera, from 1.4 m to 5 m away: depth changes 3% per pixel row far away."""
    depth, label = gs.compose(gs.hit_rectangle(RAYS, np.array([0.0, 0.5, 3.2]), np.array([0.0, 0.0, 1.0]),
                                               np.array([1.0, 0.0, 0.0]), 1.8, 0.3))
    for max_points, tol in ((None, 0.2), (1024, 0.4)):
        m = mask_to_3d(label == 0, depth_to_meters(depth.astype(np.float32)), CAM, max_points=max_points)
        np.testing.assert_allclose(m.size[:2], [3.6, 0.6], atol=tol)
        np.testing.assert_allclose(m.axis, [0, 0, 1], atol=1e-3)
        np.testing.assert_allclose(m.normal, [0, -1, 0], atol=1e-3)


# -- mug and handle ---------------------------------------------------------------------------------------------

def body_truth():
    """Box of the visible side of a cylinder of radius r at distance D: tangent points at z = D - r^2 / D."""
    r, dist = gs.MUG_RADIUS, gs.MUG_CENTER[2]
    return np.array([gs.MUG_HEIGHT, 2 * r * np.sqrt(1 - r**2 / dist**2), r - r**2 / dist])


def check_body(m: Mask3D, size_tol=(0.002, 0.002, 0.004), axis_deg=0.1, normal_deg=1.0, position_tol=0.002):
    """The mug body seen from the side; the depth extent is the least exact: silhouette pixels sample the
    tangent points only to within a pixel, where the surface runs along the ray."""
    assert m.valid
    assert np.all(np.abs(m.size - body_truth()) <= size_tol), m.size
    assert angle_deg(m.axis, [0, 1, 0]) < axis_deg and m.axis[1] > 0  # the mug's axis, sign rule: +y
    radial = m.position - gs.MUG_CENTER  # the cylinder's normal where the centroid sits
    radial[1] = 0
    assert angle_deg(m.normal, radial) < normal_deg and m.normal @ radial > 0
    np.testing.assert_allclose(m.position[:2], [0, 0], atol=position_tol)
    front = gs.MUG_CENTER[2] - gs.MUG_RADIUS
    assert front <= m.position[2] < front + 0.01
    np.testing.assert_allclose(m.box_center, [0, 0, front + body_truth()[2] / 2], atol=0.002)


def test_mug_body(mug):
    depth, label = mug
    check_body(mask_to_3d(label == 0, depth_to_meters(depth.astype(np.float32)), CAM))


def test_mug_handle_position_and_axis(mug):
    depth, label = mug
    m = mask_to_3d(label == 1, depth_to_meters(depth.astype(np.float32)), CAM)
    assert m.valid and m.point_count == (label == 1).sum()
    assert m.position[0] > gs.MUG_RADIUS + 0.01 and abs(m.position[1]) < 0.002  # beside the body, centred
    assert angle_deg(m.axis, [0, 1, 0]) < 1.0  # the handle runs along the mug's axis
    np.testing.assert_allclose(m.size[:2], [2 * (gs.HANDLE_R + gs.HANDLE_r), gs.HANDLE_R + gs.HANDLE_r],
                               atol=0.004)
    # the centroid lies between the handle and the body: the normal is the one-face fit at the handle pixel
    # nearest it, on the inner side of the 7 mm tube; compare with the torus's exact normal there
    p = RAYS[label == 1] * depth[label == 1, None]
    h = p[np.argmin(np.linalg.norm(p - m.position, axis=1))] - gs.HANDLE_CENTER
    tube = h - np.array([h[0], h[1], 0.0]) * gs.HANDLE_R / np.hypot(h[0], h[1])
    assert abs(np.linalg.norm(m.normal) - 1) < 1e-9 and angle_deg(m.normal, tube) < 15.0 and m.normal @ tube > 0


def test_mask_bleeding_onto_the_wall_and_flying_pixels_are_rejected(mug):
    depth, label = mug
    body = label == 0
    bled = ndimage.binary_dilation(body, iterations=3) & (label != 1)  # 3 px of wall inside the mask
    ring = ndimage.binary_dilation(body) & ~body
    noisy = depth.copy()
    noisy[ring] = 0.5 * (gs.MUG_CENTER[2] + gs.WALL_Z)  # mixed pixels half-way between mug and wall
    depth_m = depth_to_meters(noisy.astype(np.float32))
    m = mask_to_3d(bled, depth_m, CAM, max_points=None)
    assert m.point_count == bled.sum()
    check_body(m)
    check_body(mask_to_3d(bled, depth_m, CAM))  # on the default 1-in-4 pixel grid too


def test_holes_lower_the_valid_ratio_not_the_geometry(mug):
    depth, label = mug
    holes = depth.copy()
    holes[np.random.default_rng(0).random(depth.shape) < 0.5] = 0.0
    m = mask_to_3d(label == 0, depth_to_meters(holes.astype(np.float32)), CAM)
    assert m.valid_ratio == pytest.approx(0.5, abs=0.03)
    # statistics of ~400 random points of a 10 x 8 cm side; the normal at the centroid is a fit to the ~12 points
    # left of the 5 x 5 samples of its centred window
    check_body(m, size_tol=(0.002, 0.002, 0.005), axis_deg=2.0, normal_deg=2.5,
               position_tol=0.004)


def test_points_are_the_inliers_at_full_resolution(mug):
    depth, label = mug
    bled = ndimage.binary_dilation(label == 0, iterations=3) & (label != 1)
    m = mask_to_3d(bled, depth_to_meters(depth.astype(np.float32)), CAM, return_points=True)
    assert m.points.dtype == np.float32 and m.points.shape == ((label == 0).sum(), 3)
    radial = np.hypot(m.points[:, 0] - gs.MUG_CENTER[0], m.points[:, 2] - gs.MUG_CENTER[2])
    np.testing.assert_allclose(radial, gs.MUG_RADIUS, atol=1e-5)  # every point on the cylinder, none on the wall
    with_handle = mask_to_3d(ndimage.binary_dilation(label == 0, iterations=3), depth_to_meters(
        depth.astype(np.float32)), CAM, return_points=True)  # the handle touches the body: depth-continuous
    assert len(with_handle.points) == (ndimage.binary_dilation(label == 0, iterations=3) & (label <= 1)).sum()


def test_segments_to_3d_uses_the_segment_bbox(mug):
    depth, label = mug
    depth_m = depth_to_meters(depth.astype(np.float32))
    segs = [make_segment(label == 0, 3, 0.9, id=0), make_segment(label == 1, 5, 0.8, id=1)]
    got = segments_to_3d(segs, depth_m, CAM)
    for seg, m in zip(segs, got):
        ref = mask_to_3d(seg.mask, depth_m, CAM)
        np.testing.assert_array_equal(m.position, ref.position)
        np.testing.assert_array_equal(m.size, ref.size)


# -- no 3D ------------------------------------------------------------------------------------------------------

def test_too_few_valid_points_is_no_3d():
    depth, mask, *_ = scene_rectangle()
    sparse = depth.copy()
    keep = np.flatnonzero(mask)[::200]  # 21 valid pixels of the 4000 under the mask
    sparse.flat[np.setdiff1d(np.flatnonzero(mask), keep)] = np.nan
    m = mask_to_3d(mask, sparse, CAM)
    assert not m.valid and m.point_count == keep.size
    assert m.valid_ratio == pytest.approx(keep.size / mask.sum())
    assert np.isnan(m.position).all() and np.isnan(m.orientation).all() and np.isnan(m.normal).all()
    assert mask_to_3d(mask, sparse, CAM, min_points=10).valid


def test_empty_mask_and_all_invalid_depth_are_no_3d():
    depth, mask, *_ = scene_rectangle()
    empty = mask_to_3d(np.zeros_like(mask), depth, CAM)
    assert (empty.valid, empty.point_count, empty.valid_ratio) == (False, 0, 0.0)
    blind = mask_to_3d(mask, np.full_like(depth, np.nan), CAM)
    assert (blind.valid, blind.point_count, blind.valid_ratio) == (False, 0, 0.0)
    assert not mask_to_3d(mask, np.zeros_like(depth), CAM).valid


def test_size_mismatch_and_integer_depth_are_errors():
    depth, mask, *_ = scene_rectangle()
    with pytest.raises(ValueError, match="registered"):
        mask_to_3d(mask[:, :-1], depth[:, :-1], CAM)
    with pytest.raises(ValueError):
        mask_to_3d(mask, depth[:-2], CAM)
    with pytest.raises(ValueError, match="depth_to_meters"):
        mask_to_3d(mask, np.nan_to_num(depth * 1000).astype(np.uint16), CAM)  # millimetres are not metres


# -- distortion -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d, model", [
    ([-0.3, 0.09, 0.001, -0.0008, 0.0], "plumb_bob"),
    ([-0.02, 0.004, -0.001, 0.0003], "equidistant"),
])
def test_distorted_camera(d, model):
    rays = gs.pixel_rays(d=np.array(d), model=model)
    depth, mask, center, u, v, normal = scene_rectangle(rays, tilt_deg=20, distance=0.5)
    camera = CameraModel(gs.K, gs.W, gs.H, d=d, distortion_model=model)
    for max_points in (None, 1024):
        m = mask_to_3d(mask, depth, camera, max_points=max_points)
        assert np.abs(m.size - [0.24, 0.12, 0.0]).max() < 0.0005
        np.testing.assert_allclose(m.box_center, center, atol=0.0002)
        assert angle_deg(m.normal, normal) < 0.01 and angle_deg(m.axis, u) < 0.1
    ignored = mask_to_3d(mask, depth, CAM, max_points=None)  # the same depth read as if there were no distortion
    assert np.abs(ignored.size - [0.24, 0.12, 0.0]).max() > 0.004


# -- frames -----------------------------------------------------------------------------------------------------

def test_transform_to_a_target_frame(mug):
    depth, label = mug
    m = mask_to_3d(label == 0, depth_to_meters(depth.astype(np.float32)), CAM, return_points=True)
    # optical frame -> a base frame (x forward, y left, z up) 1 m above ground, camera tilted down 10 degrees
    optical_to_base = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)
    r = gs.rotation([0, 1, 0], np.radians(10)) @ optical_to_base
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = r, [0.2, 0.0, 1.0]
    out = transform(m, t)
    np.testing.assert_allclose(out.position, r @ m.position + [0.2, 0, 1.0], atol=1e-9)
    np.testing.assert_allclose(out.box_center, r @ m.box_center + [0.2, 0, 1.0], atol=1e-9)
    np.testing.assert_allclose(out.rotation, r @ m.rotation, atol=1e-9)
    np.testing.assert_allclose(out.normal, r @ m.normal, atol=1e-12)
    np.testing.assert_allclose(out.axis, r @ m.axis, atol=1e-12)
    np.testing.assert_allclose(out.points, m.points @ r.T + [0.2, 0, 1.0], atol=1e-5)
    np.testing.assert_array_equal(out.size, m.size)
    # the mug stands upright: its axis is vertical in the base frame, the normal faces back to the camera
    assert angle_deg(out.axis, r @ [0, 1, 0]) < 0.1 and out.normal[0] < -0.9
    with pytest.raises(ValueError, match="rigid"):
        transform(m, np.diag([2.0, 1.0, 1.0, 1.0]))


def test_quaternion_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(50):
        r = gs.rotation(rng.normal(size=3), rng.uniform(-np.pi, np.pi))
        q = matrix_to_quaternion(r)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(quaternion_to_matrix(q), r, atol=1e-12)
    np.testing.assert_allclose(matrix_to_quaternion(np.diag([1.0, -1.0, -1.0])), [1, 0, 0, 0], atol=1e-12)


@pytest.mark.parametrize("max_points", [None, 16, 1024])
def test_a_line_or_a_two_pixel_strip_gets_its_length_and_direction_without_warnings(max_points):
    cam = CameraModel(np.array([[300.0, 0, 159.5], [0, 300.0, 119.5], [0, 0, 1]]), 320, 240)
    depth = np.ones((240, 320), np.float32)
    for rows, cols, along in [(100, slice(50, 150), 0), (slice(50, 150), 100, 1), (slice(100, 102), slice(50, 150), 0)]:
        mask = np.zeros((240, 320), bool)
        mask[rows, cols] = True
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no 0 / 0 in the frame fit of a shape without area
            m = mask_to_3d(mask, depth, cam, max_points=max_points)
        assert m.valid and abs(m.axis[along]) == pytest.approx(1.0)
        assert m.size[0] == pytest.approx(99 / 300, rel=1e-3)  # 100 pixel centres, 99 spacings, at 1 m, f = 300
        assert np.isfinite(m.orientation).all() and np.isfinite(m.grasp_point).all()
