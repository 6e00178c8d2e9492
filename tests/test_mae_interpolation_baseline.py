"""experiments/mae_interpolation_baseline.py: voxel masks, interpolation, scoring."""

import numpy as np

from experiments import mae_interpolation_baseline as baseline


def test_voxel_masks_cover_whole_patches_at_the_ratio():
  masks = baseline.voxel_masks(5, (4, 16, 16), (1, 8, 8), 0.75, seed=0)
  assert masks.shape == (5, 4, 16, 16)
  np.testing.assert_allclose(masks.mean(axis=(1, 2, 3)), 0.75)  # 12 of 16 patches each
  patches = masks.reshape(5, 4, 2, 8, 2, 8)
  assert np.all(patches.min(axis=(3, 5)) == patches.max(axis=(3, 5)))  # constant per patch
  assert not np.array_equal(masks[0], masks[1])


def test_interpolation_and_score():
  rng = np.random.default_rng(0)
  visible = (rng.random((4, 16, 16)) < 0.3).astype(np.float64)
  ramp = np.broadcast_to(np.linspace(-1, 1, 16), (4, 16, 16))
  smooth_guess = baseline.interpolate(ramp, visible, (1.0, 2.0, 2.0))
  masks = 1 - visible
  assert baseline.masked_fraction_of_baseline(ramp, ramp, masks) == 0.0
  assert baseline.masked_fraction_of_baseline(np.zeros_like(ramp), ramp, masks) == 1.0
  # A smooth ramp is mostly recovered from 30% of its voxels.
  assert baseline.masked_fraction_of_baseline(smooth_guess, ramp, masks) < 0.1
  constant = np.full((4, 16, 16), 3.0)
  np.testing.assert_allclose(baseline.interpolate(constant, visible, (1.0, 2.0, 2.0)), 3.0)
