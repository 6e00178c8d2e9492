"""The classical baseline for membrane EM: a dark-ridge map into the same watershed.

Membranes are the darkest thin structures of a TEM section, so 1 - (intensity scaled
to [0, 1] by the stack's 0.5 / 99.5 percentiles) is a boundary map without any
learning; `slice_segmentation.watershed_slices` smooths it, seeds it at its low
(bright) regions and floods it. Its grid is wider than the networks' (raw intensity
needs more smoothing and larger seeds: organelles are dark too), and like theirs it
is tuned on the training slices only.
"""

from __future__ import annotations

import numpy as np

from neuroseg_jax.data import intensity
from neuroseg_jax.evaluation.slice_segmentation import WatershedGrid

CLASSICAL_GRID = WatershedGrid(seed_threshold=(0.3, 0.4, 0.5, 0.6),
                               min_seed_size=(16, 64, 256),
                               smoothing=(1.0, 2.0, 3.0), seed_erosion=(0.0, 2.0, 4.0))


def dark_ridge_map(images, stats: intensity.IntensityStats) -> np.ndarray:
  """[D, H, W] stored intensities -> [D, H, W] float32 in [0, 1], 1 = darkest (membrane)."""
  scaled = (np.asarray(images, np.float32) - stats.low) / max(stats.high - stats.low, 1e-12)
  return 1.0 - np.clip(scaled, 0.0, 1.0)
