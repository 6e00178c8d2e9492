"""Noise estimates and the blur that matches a noisy slice to the training slices' noise."""

import numpy as np
import pytest
from scipy import ndimage

from neuroseg_jax.data import noise_matching


def _smooth_slice(size: int = 128) -> np.ndarray:
  """[H, W] float64: cells of smooth intensity (a sinusoid pattern, a ramp), 40..200."""
  y, x = np.mgrid[:size, :size].astype(np.float64)
  return 120.0 + 60.0 * np.sin(x / 9.0) * np.cos(y / 13.0) + 0.15 * (x - size / 2)


@pytest.mark.parametrize("std", [1.0, 4.0, 12.0])
def test_noise_level_recovers_the_std_of_added_noise(std):
  image = _smooth_slice() + np.random.default_rng(0).normal(0, std, (128, 128))
  estimate = noise_matching.noise_level(image) * noise_matching.intensity_range(image)
  assert estimate == pytest.approx(std, rel=0.1)


def test_noise_level_is_relative_to_the_intensity_range():
  image = _smooth_slice() + np.random.default_rng(1).normal(0, 3.0, (128, 128))
  assert noise_matching.noise_level(4.0 * image + 7.0) == pytest.approx(
      noise_matching.noise_level(image), rel=1e-9)


def test_matching_sigma_is_the_smallest_blur_that_reaches_the_target():
  rng = np.random.default_rng(2)
  clean = _smooth_slice() + rng.normal(0, 2.0, (128, 128))
  noisy = _smooth_slice() + rng.normal(0, 8.0, (128, 128))
  target = noise_matching.noise_level(clean)
  assert noise_matching.matching_sigma(clean, target) == 0.0
  sigma = noise_matching.matching_sigma(noisy, target)
  assert 0.3 < sigma < noise_matching.MAX_SIGMA
  span = noise_matching.intensity_range(noisy)  # of the slice as given, as matching_sigma's
  raw_noise = noise_matching._raw_noise  # pylint: disable=protected-access

  def blurred_noise(s):
    return raw_noise(ndimage.gaussian_filter(noisy, s)) / span

  assert blurred_noise(sigma) <= target < blurred_noise(sigma - 0.01)


def test_slices_within_the_tolerance_are_left_as_stored():
  rng = np.random.default_rng(3)
  base = _smooth_slice()
  target = noise_matching.noise_level(base + rng.normal(0, 4.0, base.shape))
  slightly = base + rng.normal(0, 4.0 * 1.15, base.shape)   # 15% noisier: kept
  much = base + rng.normal(0, 4.0 * 3.0, base.shape)        # 3x noisier: blurred
  stack = np.stack([slightly, much]).astype(np.float32)
  out, sigmas = noise_matching.match_slices(stack, target)
  assert out.dtype == np.float32 and out.shape == stack.shape
  assert sigmas[0] == 0.0 and sigmas[1] > 0.0
  np.testing.assert_array_equal(out[0], stack[0])
  assert noise_matching.noise_level(out[1]) < noise_matching.noise_level(stack[1]) / 2


def test_noise_level_rejects_a_volume_and_leaves_tiny_slices_alone():
  with pytest.raises(ValueError, match=r"\[H, W\] slice"):
    noise_matching.noise_level(np.zeros((2, 8, 8)))
  tiny = np.random.default_rng(4).normal(100, 30, (2, 64))
  assert noise_matching.matching_sigma(tiny, 1e-6) == 0.0
