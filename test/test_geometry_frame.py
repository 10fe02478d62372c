"""Box axes from surface normals (geometry.frame) on synthetic normals and points with known answers."""
import numpy as np
from scipy.spatial.transform import Rotation

from semsam_ros.geometry.frame import box_frames, sample_normals
from semsam_ros.geometry.grasp import _PRODUCTS, _smallest_eigenvalues, _smallest_eigenvectors


def face_normals_of(rot, areas, rng, noise=0.0):
    """(3, N) area-weighted normals of three faces of a box with axes ``rot`` (columns), ``areas`` samples each,
    with random signs and optional angular noise."""
    cols = []
    for axis, n in zip(rot.T, areas):
        v = np.repeat(axis[:, None], n, axis=1) * rng.choice([-1.0, 1.0], n)
        cols.append(v + rng.normal(0.0, noise, v.shape))
    return np.concatenate(cols, axis=1)


def matched_angle_deg(frame, rot):
    """Worst angle between a column of ``frame`` and the column of ``rot`` it is closest to (axes are lines)."""
    cos = np.abs(frame.T @ rot).max(axis=1)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).max())


def frames_of(first, points, normals, covariance=None):
    """Both candidate frames of one group."""
    covariance = np.cov(points) if covariance is None else covariance
    n = normals.shape[1]
    return [f[0] for f in box_frames(first[None], points.astype(np.float32), normals,
                                     points.mean(axis=1)[None], covariance[None], np.array([n]), np.array([0]))]


def rectangle(rot, length, width, n_long, n_short):
    """(3, n_long * n_short) points of a length x width rectangle spanned by the first two columns of ``rot``."""
    a, b = np.meshgrid(np.linspace(-length / 2, length / 2, n_long), np.linspace(-width / 2, width / 2, n_short))
    return (np.column_stack([a.ravel(), b.ravel(), np.zeros(a.size)]) @ rot.T).T


def test_three_faces_at_right_angles_give_their_normals_whatever_the_areas():
    rng = np.random.default_rng(0)
    for areas in ((500, 300, 300), (400, 400, 400), (700, 50, 0)):  # equal areas: the points' spread is no guide
        rot = Rotation.random(random_state=rng).as_matrix()
        normals = face_normals_of(rot, areas, rng)
        points = rng.normal(0.0, 0.05, normals.shape)
        first = rot[:, 0] + rng.normal(0.0, 0.05, 3)  # a rough first axis: refined on its face
        frame = frames_of(first / np.linalg.norm(first), points, normals, np.eye(3))[0]
        assert matched_angle_deg(frame, rot) < 1e-4
        np.testing.assert_allclose(frame.T @ frame, np.eye(3), atol=1e-6)
        assert np.linalg.det(frame) > 0


def test_a_flat_face_takes_its_in_plane_axes_from_the_points():
    """One face: the normals fix only the first axis; the long side of a 2:1 rectangle comes from its points, in
    both candidates (the points' spread, the face's outline)."""
    rng = np.random.default_rng(1)
    rot = Rotation.random(random_state=rng).as_matrix()
    normals = face_normals_of(rot, (0, 0, 600), rng, noise=0.01)
    for frame in frames_of(rot[:, 2], rectangle(rot, 0.2, 0.1, 30, 20), normals):
        assert matched_angle_deg(frame[:, 2:], rot[:, 2:]) < 1.0
        assert np.degrees(np.arccos(min(1.0, abs(frame[:, 0] @ rot[:, 0])))) < 0.05  # the long side, not the short


def test_the_outline_of_a_face_gives_the_axes_that_blended_side_normals_miss():
    """A book seen from above: its top face and a few side normals, most blended at the corners (25 degrees off
    the sides' in-plane direction). The normals' frame is pulled off; the top face's outline is not."""
    rng = np.random.default_rng(3)
    rot = Rotation.random(random_state=rng).as_matrix()
    top = rectangle(rot, 0.2, 0.15, 40, 30)
    blended = Rotation.from_rotvec(rot[:, 2] * np.radians(25.0)).apply(rot[:, 0])
    sides = np.column_stack([np.repeat(rot[:, :1], 10, axis=1), np.repeat(blended[:, None], 30, axis=1)])
    normals = np.column_stack([np.repeat(rot[:, 2:], top.shape[1], axis=1) * 0.1, sides])  # side samples: larger
    points = np.column_stack([top, top[:, : sides.shape[1]]])  # the side samples' points matter little
    from_normals, from_outline = frames_of(rot[:, 2], points, normals)
    assert matched_angle_deg(from_normals, rot) > 5.0
    assert matched_angle_deg(from_outline, rot) < 0.5


def test_groups_are_fitted_each_on_its_own():
    rng = np.random.default_rng(2)
    rots = [Rotation.random(random_state=rng).as_matrix() for _ in range(3)]
    parts = [face_normals_of(r, (300, 200, 100), rng) for r in rots]
    sizes = np.array([p.shape[1] for p in parts])
    points = rng.normal(0.0, 0.05, (3, sizes.sum()))
    frames, _ = box_frames(np.stack([r[:, 2] for r in rots]), points.astype(np.float32),
                           np.concatenate(parts, axis=1), np.zeros((3, 3)),
                           np.repeat(np.eye(3)[None], 3, axis=0), sizes, np.cumsum(sizes) - sizes)
    for frame, rot in zip(frames, rots):
        assert matched_angle_deg(frame, rot) < 1e-4


def test_sample_normals_of_a_plane_are_its_normal_inside_and_zero_at_its_edge():
    normal = np.array([0.2, -0.3, 1.0]) / np.linalg.norm([0.2, -0.3, 1.0])
    height, width = 8, 9  # canvas with a padding border; the grid is rows 1-6, columns 1-7
    r, c = np.mgrid[1:7, 1:8]
    index = (r * width + c).ravel()
    u, v = np.cross(normal, [1.0, 0.0, 0.0]), None
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    points = (np.outer(u, c.ravel()) + np.outer(v, r.ravel())) * 0.01 + np.array([[0.0], [0.0], [1.0]])
    normals = sample_normals(points.astype(np.float32), index, (height, width))
    inside = ((r > 1) & (r < 6) & (c > 1) & (c < 7)).ravel()
    unit = normals[:, inside] / np.linalg.norm(normals[:, inside], axis=0)
    np.testing.assert_allclose(np.abs(unit.T @ normal), 1.0, atol=1e-5)
    assert not normals[:, ~inside].any()


def test_closed_form_smallest_eigenvalue_matches_lapack():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 40, 3)) * np.array([0.05, 0.03, 1e-4])
    cov = np.einsum("kni,knj->kij", x, x) / 40
    six = cov[:, _PRODUCTS[0], _PRODUCTS[1]]
    np.testing.assert_allclose(_smallest_eigenvalues(six), np.linalg.eigvalsh(cov)[:, 0], rtol=1e-6, atol=1e-15)


def test_closed_form_smallest_eigenvector_matches_lapack_and_survives_a_line():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 40, 3)) * np.array([0.05, 0.03, 1e-4])  # thin slabs: plane fits
    x[:5] *= np.array([1.0, 0.0, 0.0])  # points on a line: the normal is any direction across it
    x = x @ np.stack([np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in range(300)])
    cov = np.einsum("kni,knj->kij", x, x) / 40
    six = cov[:, _PRODUCTS[0], _PRODUCTS[1]]
    vectors = _smallest_eigenvectors(six, _smallest_eigenvalues(six))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-12)
    expected = np.linalg.eigh(cov[5:])[1][:, :, 0]
    np.testing.assert_allclose(np.abs(np.einsum("ki,ki->k", vectors[5:], expected)), 1.0, atol=1e-9)
    line = np.linalg.eigh(cov[:5])[1][:, :, 2]
    np.testing.assert_allclose(np.einsum("ki,ki->k", vectors[:5], line), 0.0, atol=1e-9)
