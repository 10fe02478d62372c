"""3D a gripper can trust, on ray-cast tabletop scenes (640 x 480, f = 525 px, exact depth): cuboids and cylinders
seen from 0-75 degrees above the table at 0.3-3 m, a ring seen face-on, an L-shaped plate, and the 3D being the
same with and without points."""
import numpy as np
import pytest
from scipy import ndimage

import geometry_scenes as gs
from semsam_ros.geometry import CameraModel, mask_to_3d, segments_to_3d
from semsam_ros.types import make_segment

K = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])
W, H = 640, 480
CAM = CameraModel(K, W, H)
RAYS = gs.pixel_rays(K, W, H)
HALF, RADIUS, HEIGHT = gs.BOX_HALF, gs.CAN_RADIUS, gs.CAN_HEIGHT
angle_deg = gs.line_angle_deg


def tabletop(shape, elevation, distance, turn=30.0):
    return gs.tabletop(RAYS, shape, elevation, distance, turn)


@pytest.mark.parametrize("distance", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("elevation", [0, 15, 30, 45, 60, 75])
@pytest.mark.parametrize("turn", [30, 45, 60])
def test_box_of_a_box_on_a_table_is_the_box(turn, elevation, distance):
    """The box of a box is the box (its edges and its 12 x 7 x 7.5 cm), not the spread of the faces one sees."""
    depth, mask, edges = tabletop("box", elevation, distance, turn)
    m = mask_to_3d(mask, depth, CAM)
    pixel = distance / K[0, 0]  # metres per pixel at the object
    for i in range(3):
        j = int(np.argmax(np.abs(m.rotation[:, i] @ edges)))
        assert angle_deg(m.rotation[:, i], edges[:, j]) < 3.0, (i, j)
        assert abs(m.size[i] - 2 * HALF[j]) < max(0.005, 2 * pixel), (m.size, i, j)
    on = mask[int(m.grasp_pixel[1]), int(m.grasp_pixel[0])]
    assert on and abs(np.linalg.norm(m.grasp_point) - depth[int(m.grasp_pixel[1]), int(m.grasp_pixel[0])] *
                      np.linalg.norm(RAYS[int(m.grasp_pixel[1]), int(m.grasp_pixel[0])])) < 1e-5


@pytest.mark.parametrize("half", [(0.10, 0.075, 0.015), (0.15, 0.025, 0.025)], ids=["book", "bar"])
@pytest.mark.parametrize("elevation", [30, 60])
@pytest.mark.parametrize("turn", [10, 45, 60, 80])
def test_box_with_thin_sides_seen_from_above_is_the_box(half, elevation, turn):
    """A 20 x 15 x 3 cm book and a 30 x 5 x 5 cm bar at 0.5 m: their sides are two or three samples tall, and
    their few side normals, most blended at edges and corners, were 4-5 degrees off; the top face's outline keeps
    the box on the edges."""
    half = np.array(half)
    depth, mask, edges = gs.tabletop(RAYS, "box", elevation, 0.5, turn, half)
    m = mask_to_3d(mask, depth, CAM)
    for i in range(3):
        j = int(np.argmax(np.abs(m.rotation[:, i] @ edges)))
        assert angle_deg(m.rotation[:, i], edges[:, j]) < 3.0, (i, j)
        assert abs(m.size[i] - 2 * half[j]) < 0.005, (m.size, i, j)


@pytest.mark.parametrize("distance", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("elevation", [0, 15, 30, 45, 60, 75])
def test_box_of_a_can_on_a_table_follows_its_axis(elevation, distance):
    """A can's box has the can's axis as an axis and its height along it; across the view it is the diameter,
    along the view the depth one sees: the whole diameter once its top is in view, else part of the radius (the
    pixels nearest its silhouette, where the rays graze it, see much less than r (1 - r / distance))."""
    depth, mask, axis = tabletop("can", elevation, distance)
    m = mask_to_3d(mask, depth, CAM)
    pixel = distance / K[0, 0]
    along = int(np.argmax(np.abs(m.rotation.T @ axis[:, 0])))
    assert angle_deg(m.rotation[:, along], axis[:, 0]) < 3.0
    assert abs(m.size[along] - HEIGHT) < max(0.005, 2 * pixel)
    across, view = sorted((j for j in range(3) if j != along), key=lambda j: abs(m.rotation[2, j]))
    assert abs(m.size[across] - 2 * RADIUS) < max(0.005, 2 * pixel)
    if elevation >= 30:
        assert abs(m.size[view] - 2 * RADIUS) < max(0.005, 2 * pixel)
    else:
        assert RADIUS / 2 < m.size[view] < 2 * RADIUS


@pytest.mark.parametrize("elevation", [30, 60])
def test_top_face_at_grazing_angles_is_whole(elevation):
    """The top face alone (a part mask) has an exact answer: its rectangle, its normal the table's up."""
    right, forward, up = gs.table_frame(elevation)
    rot = np.column_stack([right, forward, up]) @ gs.rotation([0.0, 0.0, 1.0], np.radians(30.0))
    top = np.array([0.0, 0.0, 0.6]) + HALF[2] * up
    depth, label = gs.compose(gs.hit_rectangle(RAYS, top, rot[:, 0], rot[:, 1], HALF[0], HALF[1]),
                              gs.hit_plane(RAYS, up, top - 2 * HALF[2] * up))
    for max_points in (None, 256):
        m = mask_to_3d(label == 0, depth.astype(np.float32), CAM, max_points=max_points)
        np.testing.assert_allclose(m.size[:2], 2 * HALF[:2], atol=0.005)
        assert angle_deg(m.axis, rot[:, 0]) < 3.0 and angle_deg(m.grasp_normal, up) < 0.5


@pytest.mark.parametrize("distance", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("elevation", [15, 30, 45, 60])
def test_normal_at_the_centroid_is_one_face_of_the_box(elevation, distance):
    """The centroid of a box seen from above lies near the edge between its top and a side: its normal is the
    normal of one face, not a blend (a plane fit across the edge was 6-40 degrees off)."""
    right, forward, up = gs.table_frame(elevation)
    rot = np.column_stack([right, forward, up]) @ gs.rotation([0.0, 0.0, 1.0], np.radians(30.0))
    depth, mask, _ = tabletop("box", elevation, distance)
    m = mask_to_3d(mask, depth, CAM)
    assert min(angle_deg(m.normal, face) for face in rot.T) < 0.5
    if elevation >= 45:
        assert angle_deg(m.normal, up) < 0.5 and m.normal @ up > 0  # the top face


def test_silhouette_against_the_wall_is_still_cut():
    """A box 0.5 m before a wall, its mask 2 px too large: the wall pixels are not part of its box."""
    depth, label = gs.compose(gs.hit_box(RAYS, np.array([0.0, 0.0, 1.0]), np.eye(3), HALF),
                              gs.hit_plane(RAYS, np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, 1.5])))
    bled = ndimage.binary_dilation(label == 0, iterations=2)  # a ring under 25 % of the box: dropped
    m = mask_to_3d(bled, depth.astype(np.float32), CAM)
    np.testing.assert_allclose(m.size[:2], 2 * HALF[:2], atol=0.005)
    assert m.size[2] < 0.005  # one face, no wall behind it


def test_3d_is_the_same_with_and_without_points():
    depth, mask, _ = tabletop("box", 30, 0.6)
    depth[::7, ::5] = np.nan  # holes make the sampled and the full-resolution sets differ most
    segs = [make_segment(mask, 3, 1.0, id=0)]
    plain, with_points = segments_to_3d(segs, depth, CAM)[0], segments_to_3d(segs, depth, CAM, return_points=True)[0]
    assert plain.points is None and len(with_points.points) > 0
    for name in ("position", "orientation", "size", "box_center", "normal", "axis", "grasp_point", "grasp_normal",
                 "grasp_pixel"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(with_points, name), err_msg=name)


def test_grasp_point_of_a_ring_seen_face_on_is_on_the_ring():
    """A handle seen face-on: the centroid lies in the hole, the grasp point on the ring."""
    centre, normal = np.array([0.02, -0.01, 0.5]), np.array([0.0, 0.0, -1.0])
    depth, label = gs.compose(gs.hit_annulus(RAYS, centre, normal, 0.025, 0.035),
                              gs.hit_plane(RAYS, normal, np.array([0.0, 0.0, 0.9])))
    m = mask_to_3d(label == 0, depth.astype(np.float32), CAM)
    radius = np.linalg.norm(m.grasp_point - centre)
    assert 0.025 <= radius <= 0.035 and abs(m.grasp_point[2] - 0.5) < 1e-6
    assert np.linalg.norm(m.position - centre) < 0.025  # the robust centroid falls in the hole
    assert angle_deg(m.grasp_normal, normal) < 0.1 and m.grasp_normal @ normal > 0


def test_grasp_point_of_an_l_shaped_plate_is_inside_it():
    """A concave (L-shaped) plate tilted 40 degrees: the grasp pixel lies inside, far from the re-entrant corner."""
    u = np.array([1.0, 0.0, 0.0])
    v = gs.rotation(u, np.radians(40.0)) @ np.array([0.0, 1.0, 0.0])
    centre = np.array([0.0, 0.0, 0.7])
    arm1 = gs.hit_rectangle(RAYS, centre + 0.04 * v, u, v, 0.015, 0.055)  # vertical arm
    arm2 = gs.hit_rectangle(RAYS, centre + 0.045 * u, u, v, 0.045, 0.015)  # horizontal arm
    depth, label = gs.compose(np.minimum(arm1, arm2), gs.hit_plane(RAYS, np.array([0.0, 0.0, 1.0]),
                                                                   np.array([0.0, 0.0, 1.2])))
    mask = label == 0
    m = mask_to_3d(mask, depth.astype(np.float32), CAM)
    x, y = (int(c) for c in m.grasp_pixel)
    assert mask[y - 3 : y + 4, x - 3 : x + 4].all()  # well inside the mask
    local = m.grasp_point - centre
    assert abs(local @ np.cross(u, v)) < 1e-6  # on the plate's plane
    assert angle_deg(m.grasp_normal, np.cross(u, v)) < 0.5
