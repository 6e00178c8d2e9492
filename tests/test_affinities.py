"""Targets from instance labels: affinities, boundaries, erosion, MitoEM targets."""

import numpy as np
import pytest

from neuroseg_jax.data import affinities as aff
from neuroseg_jax.errors import DataError

# Two z-slices, hand-made: instances 1, 2, 3 and background 0.
LABELS = np.array([
    [[1, 1, 2],
     [1, 1, 2],
     [0, 3, 3]],
    [[1, 1, 2],
     [0, 2, 2],
     [0, 3, 3]],
], np.uint32)


def test_nearest_neighbour_affinities_by_hand():
  got = aff.affinities_from_labels(LABELS)
  assert got.shape == (2, 3, 3, 3) and got.dtype == np.float32
  z_aff = [[[0, 0, 0], [0, 0, 0], [0, 0, 0]],   # z = 0: the partner z = -1 is outside
           [[1, 1, 1], [0, 0, 1], [0, 1, 1]]]
  y_aff = [[[0, 0, 0], [1, 1, 1], [0, 0, 0]],
           [[0, 0, 0], [0, 0, 1], [0, 0, 0]]]
  x_aff = [[[0, 1, 0], [0, 1, 0], [0, 0, 1]],
           [[0, 1, 0], [0, 0, 1], [0, 0, 1]]]
  np.testing.assert_array_equal(got[..., 0], z_aff)
  np.testing.assert_array_equal(got[..., 1], y_aff)
  np.testing.assert_array_equal(got[..., 2], x_aff)


def test_custom_offsets_positive_and_long_range():
  offsets = [(0, 1, 0), (0, 0, -2), (0, 5, 0)]
  got = aff.affinities_from_labels(LABELS, offsets)
  backward_y = aff.affinities_from_labels(LABELS)[..., 1]
  # (0, +1, 0) at row y is the (0, -1, 0) affinity of row y + 1; the last row is outside.
  np.testing.assert_array_equal(got[:, :-1, :, 0], backward_y[:, 1:])
  np.testing.assert_array_equal(got[:, -1, :, 0], 0)
  # Long range (0, 0, -2): only column 2 has a partner (column 0).
  np.testing.assert_array_equal(got[..., 1], [[[0, 0, 0], [0, 0, 0], [0, 0, 0]],
                                              [[0, 0, 0], [0, 0, 0], [0, 0, 0]]])
  labels = np.ones((1, 1, 3), np.uint8)
  np.testing.assert_array_equal(aff.affinities_from_labels(labels, [(0, 0, -2)])[0, 0, :, 0],
                                [0, 0, 1])
  np.testing.assert_array_equal(got[..., 2], 0)  # the partner is always outside


def test_valid_mask_marks_pairs_inside_the_volume():
  mask = aff.affinity_valid_mask((2, 3, 4), [(-1, 0, 0), (0, 0, 2)])
  assert mask.shape == (2, 3, 4, 2)
  np.testing.assert_array_equal(mask[0, ..., 0], 0)
  np.testing.assert_array_equal(mask[1, ..., 0], 1)
  np.testing.assert_array_equal(mask[0, 0, :, 1], [1, 1, 0, 0])


def test_bad_inputs_raise_data_error():
  with pytest.raises(DataError, match="D, H, W"):
    aff.affinities_from_labels(np.zeros((3, 3), np.int32))
  with pytest.raises(DataError, match="integer"):
    aff.affinities_from_labels(np.zeros((1, 3, 3), np.float32))
  with pytest.raises(DataError, match="offsets"):
    aff.affinities_from_labels(LABELS, [(0, 0)])


# One slice: instance 1 (columns 0-2) touches instance 2 (columns 3-5) in rows 0-2,
# row 3 is background under instance 1 and instance 2 continues.
TOUCHING = np.array([[
    [1, 1, 1, 2, 2, 2],
    [1, 1, 1, 2, 2, 2],
    [1, 1, 1, 2, 2, 2],
    [0, 0, 0, 2, 2, 2],
]], np.uint16)


def test_instance_boundaries_by_hand():
  touching = aff.instance_boundaries(TOUCHING, 1, touching_only=True)
  expected = np.zeros_like(touching)
  expected[0, :, 2:4] = True  # windows holding both 1 and 2 (row 3, col 2 is background)
  np.testing.assert_array_equal(touching, expected)
  every = aff.instance_boundaries(TOUCHING, 1)
  expected[0, 2:4, 0:2] = True  # plus both sides of the 1 | background edge
  np.testing.assert_array_equal(every, expected)
  wide = aff.instance_boundaries(TOUCHING, 2, touching_only=True)
  np.testing.assert_array_equal(wide[0].any(axis=0), [False, True, True, True, True, False])


def test_erosion_opens_gaps_between_instances_only_by_default():
  eroded = aff.erode_labels(TOUCHING, 1)
  expected = TOUCHING.copy()
  expected[0, :, 2:4] = 0
  np.testing.assert_array_equal(eroded, expected)
  assert eroded.dtype == TOUCHING.dtype
  np.testing.assert_array_equal(aff.erode_labels(TOUCHING, 0), TOUCHING)
  # A lone 5x5 square shrinks by one voxel per side only with at_background.
  square = np.zeros((1, 7, 7), np.int32)
  square[0, 1:6, 1:6] = 4
  np.testing.assert_array_equal(aff.erode_labels(square, 1), square)
  shrunk = np.zeros_like(square)
  shrunk[0, 2:5, 2:5] = 4
  np.testing.assert_array_equal(aff.erode_labels(square, 1, at_background=True), shrunk)


def test_binary_contour_and_distance_targets():
  square = np.zeros((2, 7, 7), np.int32)
  square[:, 1:6, 1:6] = 9
  targets = aff.binary_contour_targets(square, contour_width=1, with_distance=True)
  assert targets.shape == (2, 7, 7, 3) and targets.dtype == np.float32
  np.testing.assert_array_equal(targets[..., 0], square != 0)
  np.testing.assert_array_equal(targets[..., 1], aff.instance_boundaries(square, 1))
  # Distance to the outside: rings 1, 2, 3 voxels deep, normalised by 3; background -1.
  expected = np.full((7, 7), -1.0, np.float32)
  for depth in (1, 2, 3):
    expected[depth:7 - depth, depth:7 - depth] = depth / 3
  np.testing.assert_allclose(targets[0, ..., 2], expected, rtol=1e-6)
  np.testing.assert_allclose(targets[1, ..., 2], expected, rtol=1e-6)


def test_distance_target_ignores_the_volume_edge_and_large_ids():
  labels = np.zeros((1, 3, 5), np.uint64)
  labels[0, :, :4] = 10**12  # touches the volume edge on three sides
  dist = aff.instance_distance_target(labels)
  # Only column 4 (background) is outside: distances 4, 3, 2, 1 normalised by 4.
  np.testing.assert_allclose(dist[0], np.tile([1.0, 0.75, 0.5, 0.25, -1.0], (3, 1)))
  dist3d = aff.instance_distance_target(np.tile(labels, (3, 1, 1)), in_plane=False)
  np.testing.assert_allclose(dist3d[1], dist[0])
