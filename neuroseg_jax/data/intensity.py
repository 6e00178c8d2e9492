"""Intensity statistics of a [D, H, W] volume and the one standardisation of its values.

Statistics are taken from a sample of full z-slices (first, middle, last) so that
a volume of any size costs three slice reads. Standardisation maps stored values
to about zero mean and unit variance in two steps: the 0.5 / 99.5 percentiles to
[0, 1] (clipped, so a few hot pixels cannot stretch the range), then the mean and
standard deviation of that clipped sample to 0 and 1 (MAE standardises ImageNet
pixels the same way; pre-training and fine-tuning must feed the encoder alike).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np


class IntensityStats(NamedTuple):
  low: float   # percentile intensities mapped to 0 and 1 ...
  high: float
  mean: float  # ... and the mean and standard deviation of the mapped, clipped sample.
  std: float


def sample_slices(volume, num_slices: int = 3) -> np.ndarray:
  """Up to `num_slices` evenly spaced full z-slices (first, middle, last) -> [k, H, W]."""
  zs = np.unique(np.linspace(0, volume.shape[0] - 1, num_slices).round().astype(int))
  return np.stack([volume[int(z)] for z in zs])


def intensity_stats(volume, percentiles: tuple[float, float] = (0.5, 99.5)) -> IntensityStats:
  """`IntensityStats` of `sample_slices(volume)`: its `percentiles`, then the mean / std
  of the sample mapped to [0, 1] by them and clipped (the std at least 1e-6)."""
  sample = sample_slices(volume).astype(np.float64)
  low, high = (float(p) for p in np.percentile(sample, percentiles))
  scaled = _to_unit(sample, low, high)
  return IntensityStats(low, high, float(scaled.mean()), max(float(scaled.std()), 1e-6))


def _to_unit(values, low: float, high: float):
  """[...] -> (values - low) / (high - low) clipped to [0, 1], in the dtype of `values`."""
  return ((values - low) / max(high - low, 1e-12)).clip(0.0, 1.0)


def standardize(values, stats: IntensityStats, jitter: Callable | None = None):
  """Stored values (NumPy or JAX array, any shape) -> float32 standardised values.

  ((clip((values - low) / (high - low), 0, 1) -> jitter) - mean) / std, with the
  low / high percentiles and the mean / std of `stats` (see `intensity_stats`).
  `jitter` (training augmentation) acts on the [0, 1] values, before centring.
  """
  scaled = _to_unit(values.astype("float32"), stats.low, stats.high)
  if jitter is not None:
    scaled = jitter(scaled)
  return (scaled - stats.mean) / stats.std
