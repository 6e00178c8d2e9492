"""Matching the pixel noise of new EM slices to the training slices' by a Gaussian blur.

Serial sections differ in noise: ISBI 2012 slices 15-19 and its 30 unlabeled slices
carry about three times the pixel noise of slices 0-14 (medians 0.051 and 0.040 against
0.015 of the intensity range, `noise_level`), and a boundary network trained on the
clean slices misses faint membranes in the noisy ones, by an amount that changes from
seed to seed (issue 15). Before prediction, every slice noisier than the training slices by more
than `TOLERANCE` is blurred with the smallest Gaussian sigma that brings its noise
estimate down to theirs (`matching_sigma`). The sigma comes from the image alone (no
labels), so it can be chosen on any new volume; slices as clean as the training ones
are left untouched.

The noise estimate is Immerkaer's (1996, "Fast noise variance estimation"): the slice
is convolved with twice the difference of two 3x3 Laplacians (diagonal and axial), a
mask that cancels locally planar and quadratic intensity, and sigma = sqrt(pi / 2) / 6
x mean |response|. It is given
relative to the slice's 0.5-99.5 percentile range, the span that standardisation maps
to [0, 1] (`intensity.py`), so volumes stored at another gain compare alike.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Immerkaer's mask, 2 x (diagonal Laplacian / 2 - axial Laplacian): locally planar intensity
# gives 0, and white noise of std s a response of std 6 s (the mask's L2 norm).
NOISE_MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
TOLERANCE = 1.25     # slices up to this factor noisier than the target are left as they are
MAX_SIGMA = 3.0      # px; the bisection's upper end (noise is then far below any target)
BISECTION_STEPS = 12  # sigma found to MAX_SIGMA / 2**12 (< 0.001 px)
PERCENTILES = (0.5, 99.5)


def intensity_range(image: np.ndarray) -> float:
  """The 0.5-99.5 percentile span of a [H, W] slice (at least 1e-12)."""
  low, high = np.percentile(image, PERCENTILES)
  return max(float(high - low), 1e-12)


def _raw_noise(image: np.ndarray) -> float:
  response = ndimage.convolve(image, NOISE_MASK, mode="reflect")[1:-1, 1:-1]
  return float(np.sqrt(np.pi / 2.0) * np.abs(response).mean() / 6.0)


def noise_level(image) -> float:
  """Immerkaer noise std of a [H, W] slice, relative to its percentile range (0 for a
  slice under 3 x 3 pixels, where the mask does not fit: such a slice is never blurred)."""
  image = np.asarray(image, np.float64)
  if image.ndim != 2:
    raise ValueError(f"expected a [H, W] slice, got shape {image.shape}")
  if min(image.shape) < 3:
    return 0.0
  return _raw_noise(image) / intensity_range(image)


def stack_noise_level(stack) -> float:
  """Median `noise_level` of the slices of a [D, H, W] stack (the training slices)."""
  return float(np.median([noise_level(s) for s in np.asarray(stack)]))


def matching_sigma(image, target: float) -> float:
  """The Gaussian sigma (px) that brings a [H, W] slice's noise down to `target`
  (relative units, as `noise_level`): 0 when it is at most TOLERANCE x target, else
  the smallest sigma in (0, MAX_SIGMA] whose blurred slice is at most target (found
  by bisection; the noise of a blurred slice falls as sigma grows)."""
  image = np.asarray(image, np.float64)
  span = intensity_range(image)  # of the slice as stored: fixed while sigma varies
  if noise_level(image) <= TOLERANCE * target:
    return 0.0
  low, high = 0.0, MAX_SIGMA
  for _ in range(BISECTION_STEPS):
    middle = (low + high) / 2.0
    if _raw_noise(ndimage.gaussian_filter(image, middle)) / span <= target:
      high = middle
    else:
      low = middle
  return high


def match_slices(stack, target: float) -> tuple[np.ndarray, list[float]]:
  """[D, H, W] slices -> ([D, H, W] float32 slices, each blurred by its `matching_sigma`,
  the D sigmas)."""
  stack = np.asarray(stack)
  out, sigmas = np.empty(stack.shape, np.float32), []
  for z, image in enumerate(stack):
    sigma = matching_sigma(image, target)
    out[z] = ndimage.gaussian_filter(image.astype(np.float32), sigma) if sigma else image
    sigmas.append(round(sigma, 4))
  return out, sigmas
