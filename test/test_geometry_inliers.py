"""The outlier rule's pieces: regions of linked nodes, and the surface-continuation test of large jumps."""
import numpy as np
import pytest
from scipy import ndimage

from semsam_ros.geometry.inliers import _follows, _linked_regions


def _regions_of_the_twice_as_fine_image(nodes, across, down):
    h, w = nodes.shape
    links = np.zeros((2 * h - 1, 2 * w - 1), dtype=bool)
    links[::2, ::2], links[::2, 1::2], links[1::2, ::2] = nodes, across, down
    labels, n = ndimage.label(links)
    return labels[::2, ::2], n


@pytest.mark.parametrize("seed", range(20))
def test_linked_regions_are_those_of_the_twice_as_fine_image(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(3, 40, size=2)
    nodes = rng.random((h, w)) < rng.uniform(0.3, 1.0)
    across = nodes[:, :-1] & nodes[:, 1:] & (rng.random((h, w - 1)) > rng.uniform(0.0, 0.5))
    down = nodes[:-1] & nodes[1:]
    cut_rows = rng.choice(h - 1, size=rng.integers(0, h), replace=False)  # only these rows have cut links down
    down[cut_rows] &= rng.random((cut_rows.size, w)) > 0.5
    labels, n = _linked_regions(nodes, across, down, np.repeat(cut_rows, 2))  # a row may be named twice
    expected, n_expected = _regions_of_the_twice_as_fine_image(nodes, across, down)
    assert n == n_expected
    np.testing.assert_array_equal(labels, expected)


def test_a_step_that_continues_a_plane_is_followed_and_a_depth_edge_is_not():
    # one row of a canvas (padding first and last): a plane at a grazing angle (inverse depth linear in the pixel,
    # large steps) up to pixel 8, then the wall behind
    inverse = np.full(14, np.nan)
    inverse[1:9] = 2.0 - 0.15 * np.arange(8)
    inverse[9:13] = 0.25
    follows = _follows(inverse, np.array([4, 8]), 1)  # links 4 -> 5 (on the plane) and 8 -> 9 (to the wall)
    np.testing.assert_array_equal(follows, [True, False])
    column = np.full((14, 3), np.nan)
    column[:, 1] = inverse  # the same profile down the middle column of a 3-wide canvas: stride 3
    np.testing.assert_array_equal(_follows(column.reshape(-1), np.array([4, 8]) * 3 + 1, 3), [True, False])
