"""Depth rules, the camera model (distortion both ways) and 3D point -> pixel projection."""
from types import SimpleNamespace

import numpy as np
import pytest

from semsam_ros.geometry import CameraModel, depth_to_meters, project_point

K = np.array([[500.0, 0.0, 320.0], [0.0, 505.0, 240.0], [0.0, 0.0, 1.0]])


DISTORTIONS = pytest.mark.parametrize("d, model", [
    ([-0.28, 0.07, 0.001, -0.0005, 0.0], "plumb_bob"),
    ([0.35, -0.1, 0.0008, 0.0004, 0.01, 0.7, -0.05, 0.02], "rational_polynomial"),
    ([0.05, -0.01, 0.003, -0.001], "equidistant"),
])


def camera_info(d=(), model="plumb_bob", width=640, height=480):
    """An object shaped like sensor_msgs/CameraInfo (ROS 2 field names)."""
    p = np.zeros((3, 4))
    p[:, :3] = [[480.0, 0.0, 322.0], [0.0, 480.0, 236.0], [0.0, 0.0, 1.0]]
    return SimpleNamespace(k=K.ravel().tolist(), d=list(d), distortion_model=model, width=width, height=height,
                           p=p.ravel().tolist())


# -- depth ------------------------------------------------------------------------------------------------------

def test_16uc1_is_millimetres_with_zero_and_range_invalid():
    depth = np.array([[0, 500, 1234], [49, 10000, 65535]], dtype=np.uint16)
    m = depth_to_meters(depth, "16UC1")
    assert m.dtype == np.float32
    np.testing.assert_allclose(m[0, 1:], [0.5, 1.234], rtol=1e-6)
    assert m[1, 1] == pytest.approx(10.0)  # max_m is inclusive
    assert np.isnan(m[0, 0]) and np.isnan(m[1, 0]) and np.isnan(m[1, 2])  # 0, below 5 cm, above 10 m


def test_32fc1_is_metres_nan_inf_negative_invalid():
    depth = np.array([[np.nan, np.inf, -1.0, 0.0, 0.75, 12.0]], dtype=np.float32)
    m = depth_to_meters(depth, "32FC1", min_m=0.1, max_m=11.0)
    assert np.isnan(m[0, [0, 1, 2, 3, 5]]).all()
    assert m[0, 4] == pytest.approx(0.75)
    assert not np.shares_memory(m, depth)


def test_encoding_inferred_from_dtype_and_single_channel_accepted():
    np.testing.assert_allclose(depth_to_meters(np.full((2, 3, 1), 800, np.uint16)), 0.8)
    np.testing.assert_allclose(depth_to_meters(np.full((2, 3), 0.8, np.float64)), 0.8)


@pytest.mark.parametrize("depth, encoding", [
    (np.zeros((2, 2), np.float32), "16UC1"),
    (np.zeros((2, 2), np.uint16), "32FC1"),
    (np.zeros((2, 2), np.uint8), None),
    (np.zeros((2, 2), np.uint16), "bgr8"),
    (np.zeros((2, 2, 3), np.uint16), "16UC1"),
])
def test_bad_encodings_and_shapes_are_errors(depth, encoding):
    with pytest.raises(ValueError):
        depth_to_meters(depth, encoding)


def test_depth_not_registered_to_the_image_is_an_error_not_a_resize():
    with pytest.raises(ValueError, match="registered"):
        depth_to_meters(np.zeros((240, 320), np.uint16), image_shape=(480, 640, 3))
    assert depth_to_meters(np.zeros((480, 640), np.uint16), image_shape=(480, 640, 3)).shape == (480, 640)


# -- camera model -----------------------------------------------------------------------------------------------

def test_from_camera_info_and_rectified():
    cam = CameraModel.from_camera_info(camera_info(d=[0.1, 0, 0, 0, 0]))
    np.testing.assert_array_equal(cam.k, K)
    assert (cam.width, cam.height, cam.distortion_model, cam.is_distorted) == (640, 480, "plumb_bob", True)
    rect = CameraModel.from_camera_info(camera_info(d=[0.1, 0, 0, 0, 0]), rectified=True)
    assert rect.k[0, 0] == 480.0 and rect.k[1, 2] == 236.0 and not rect.is_distorted


def test_from_rosbags_camera_info_message():
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    t = ts.types
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="cam")
    msg = t["sensor_msgs/msg/CameraInfo"](
        header=header, height=480, width=640, distortion_model="equidistant",
        d=np.array([0.01, -0.002, 0.0, 0.0]), k=K.ravel(), r=np.eye(3).ravel(), p=np.zeros(12),
        binning_x=0, binning_y=0,
        roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    cam = CameraModel.from_camera_info(msg)
    assert cam.distortion_model == "equidistant" and cam.is_distorted
    np.testing.assert_array_equal(cam.d, [0.01, -0.002, 0.0, 0.0])


def test_zero_coefficients_mean_no_distortion_and_rays_are_pinhole():
    cam = CameraModel(K, 640, 480, d=[0.0] * 5)
    assert not cam.is_distorted and cam.ray_valid is None
    assert cam.rays.shape == (3, 480, 640) and cam.rays.dtype == np.float32
    np.testing.assert_allclose(cam.rays[:, 240, 320], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(cam.rays[:, 0, 0], [-320 / 500, -240 / 505, 1.0], rtol=1e-6)


def test_unknown_distortion_model_warns_and_is_ignored():
    with pytest.warns(UserWarning, match="not supported"):
        cam = CameraModel(K, 640, 480, d=[0.1, 0.2], distortion_model="kannala_brandt_9")
    assert not cam.is_distorted


def test_invalid_intrinsics_are_rejected():
    with pytest.raises(ValueError):
        CameraModel(np.zeros((3, 3)), 640, 480)
    with pytest.raises(ValueError):
        CameraModel(K, 0, 480)


def test_radtan_forward_matches_the_formula():
    cam = CameraModel(K, 640, 480, d=[0.1, 0.01, 0.002, -0.001, 0.003])
    x, y = 0.3, -0.2
    r2 = x * x + y * y
    radial = 1 + 0.1 * r2 + 0.01 * r2**2 + 0.003 * r2**3
    xd = x * radial + 2 * 0.002 * x * y - 0.001 * (r2 + 2 * x * x)
    yd = y * radial + 0.002 * (r2 + 2 * y * y) + 2 * -0.001 * x * y
    got = cam.distort(np.array([x]), np.array([y]))
    np.testing.assert_allclose([got[0][0], got[1][0]], [xd, yd], rtol=1e-12)


@DISTORTIONS
def test_every_pixel_ray_projects_back_to_its_pixel(d, model):
    cam = CameraModel(K, 640, 480, d=d, distortion_model=model)
    rays = cam.rays
    ok = np.ones((480, 640), bool) if cam.ray_valid is None else cam.ray_valid
    assert ok.mean() > 0.999
    v, u = np.nonzero(ok)
    uv = cam.project((rays[:, v, u] * 1.7).T)
    assert np.abs(uv[:, 0] - u).max() < 1e-3 and np.abs(uv[:, 1] - v).max() < 1e-3
    # the distortion is real: the corner ray differs from the pinhole one by pixels
    assert abs(rays[0, 0, 0] * 500 - (-320)) > 3


# -- projection -------------------------------------------------------------------------------------------------

def test_project_point_pinhole_and_rejections():
    cam = CameraModel(K, 640, 480)
    assert project_point([0.0, 0.0, 2.0], cam) == pytest.approx((320.0, 240.0))
    assert project_point([0.2, -0.1, 1.0], cam) == pytest.approx((420.0, 189.5))
    assert project_point([-320.5 / 500, 0.0, 1.0], cam) == pytest.approx((-0.5, 240.0))  # edge of pixel 0
    with pytest.raises(ValueError, match="behind"):
        project_point([0.1, 0.1, -1.0], cam)
    with pytest.raises(ValueError, match="behind"):
        project_point([0.1, 0.1, 0.0], cam)
    with pytest.raises(ValueError, match="outside"):
        project_point([-320.6 / 500, 0.0, 1.0], cam)
    with pytest.raises(ValueError, match="outside"):
        project_point([0.0, 0.6, 1.0], cam)
    with pytest.raises(ValueError):
        project_point([0.0, np.nan, 1.0], cam)


def test_project_point_with_distortion_round_trips_a_pixel_and_rejects_fold_back():
    cam = CameraModel(K, 640, 480, d=[-0.28, 0.07, 0.001, -0.0005, 0.0])
    ray = cam.rays[:, 17, 601].astype(np.float64)
    assert project_point(ray * 0.9, cam) == pytest.approx((601.0, 17.0), abs=1e-3)
    # a barrel lens whose radial polynomial folds back: far outside the field of view a point would land in the
    # image again; it is rejected, and pixels beyond the fold have no ray
    folding = CameraModel(K, 640, 480, d=[-0.35, 0.0, 0.0, 0.0, 0.0])
    u = 500 * folding.distort(np.array([1.5]), np.array([0.0]))[0][0] + 320
    assert 0 <= u < 640
    with pytest.raises(ValueError, match="field of view"):
        project_point([1.5, 0.0, 1.0], folding)
    assert folding.ray_valid is not None and not folding.ray_valid[0, 0] and folding.ray_valid[240, 320]
    assert folding.max_radius == pytest.approx(1 / np.sqrt(1.05), abs=0.02)


# -- points only, cached cameras, hostile camera infos --------------------------------------------------------------

@DISTORTIONS
def test_single_points_undistort_as_the_full_image_map(d, model):
    cam = CameraModel(K, 640, 480, d=d, distortion_model=model)
    v, u = np.mgrid[0:480, 0:640].astype(np.float64)  # the whole-image map, in one Newton solve
    ki = np.linalg.inv(K)
    x, y, ok = cam.undistort(ki[0, 0] * u + ki[0, 2], ki[1, 1] * v + ki[1, 2])
    rng = np.random.default_rng(0)
    pick = rng.integers(0, [640, 480], size=(50, 2))
    rays, valid = cam.pixel_rays(pick)
    np.testing.assert_array_equal(valid, ok[pick[:, 1], pick[:, 0]])
    np.testing.assert_allclose(rays[valid, 0], x[pick[valid, 1], pick[valid, 0]], atol=1e-9)
    np.testing.assert_allclose(rays[valid, 1], y[pick[valid, 1], pick[valid, 0]], atol=1e-9)
    clicks = rng.uniform(0, [639, 479], size=(20, 2))  # sub-pixel clicks project back onto themselves
    rays, valid = cam.pixel_rays(clicks)
    np.testing.assert_allclose(cam.project(rays[valid] * 2.5), clicks[valid], atol=1e-6)
    assert cam._rays is None  # nothing per image was built


def test_a_click_on_a_4k_camera_needs_no_image_map():
    info = camera_info(d=[-0.28, 0.07, 0.001, -0.0005, 0.0], width=4096, height=3072)
    info.k = [2000.0, 0, 2048, 0, 2000.0, 1536, 0, 0, 1]
    cam = CameraModel.from_camera_info(info)
    u, v = project_point([0.1, -0.05, 2.0], cam)
    assert 0 <= u < 4096 and 0 <= v < 3072 and cam._rays is None
    assert CameraModel.from_camera_info(SimpleNamespace(**vars(info))) is cam  # same content, same maps
    assert CameraModel.from_camera_info(camera_info(d=[-0.2, 0.07, 0.001, -0.0005, 0.0])) is not cam


@pytest.mark.parametrize("change, cause", [
    ({"width": 10**9, "height": 10**9}, "too_large"),
    ({"width": 0}, "malformed"),
    ({"k": [float("nan")] * 9}, "bad_camera_info"),
    ({"k": [1.0, 2.0]}, "bad_camera_info"),
    ({"d": [float("inf"), 0, 0, 0, 0]}, "bad_camera_info"),
    ({"width": "wide"}, "bad_camera_info"),
])
def test_hostile_camera_infos_are_rejected_by_cause(change, cause):
    from semsam_ros.limits import InputRejected

    info = camera_info(d=[0.1, 0, 0, 0, 0])
    vars(info).update(change)
    with pytest.raises(InputRejected) as err:
        CameraModel.from_camera_info(info)
    assert err.value.cause == cause
