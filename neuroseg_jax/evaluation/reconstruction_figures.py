"""Masked-autoencoder reconstructions as images: input, masked input, reconstruction."""

from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import figure as mpl_figure

from neuroseg_jax.losses.reconstruction import denormalize_prediction
from neuroseg_jax.models.mae import patchify, unpatchify

COLUMNS = ("input", "masked input", "reconstruction")


def reconstruction_panels(inputs: jax.Array, prediction: jax.Array, mask: jax.Array,
                          patch_size: Sequence[int], norm_pix: bool) -> tuple[jax.Array, jax.Array]:
  """MAE outputs -> images for display (jit-able).

  Args:
    inputs: [B, *spatial, C] model inputs.
    prediction: [B, N, P] predicted targets (norm-pix targets if norm_pix).
    mask: [B, N], 1 = masked.

  Returns:
    masked: [B, *spatial, C] inputs with masked patches set to 0.
    reconstruction: [B, *spatial, C] predicted voxels in masked patches (norm-pix
      undone with the true patches' mean and std, as in the MAE paper's figures),
      input voxels in visible patches.
  """
  inputs = jnp.asarray(inputs, jnp.float32)
  grid = [s // p for s, p in zip(inputs.shape[1:-1], patch_size)]
  patches = patchify(inputs, patch_size)
  hidden = jnp.asarray(mask)[..., None] > 0
  predicted = denormalize_prediction(jnp.asarray(prediction, jnp.float32), patches, norm_pix)
  masked = jnp.where(hidden, 0.0, patches)
  reconstruction = jnp.where(hidden, predicted, patches)
  return unpatchify(masked, grid, patch_size), unpatchify(reconstruction, grid, patch_size)


def central_slice(volume: np.ndarray) -> np.ndarray:
  """[D, H, W, C] -> [H, W] (middle z, channel 0); [H, W, C] -> [H, W]."""
  volume = np.asarray(volume)[..., 0]
  return volume[volume.shape[0] // 2] if volume.ndim == 3 else volume


def save_reconstruction_figure(path: str | os.PathLike, inputs: np.ndarray, masked: np.ndarray,
                               reconstruction: np.ndarray, title: str = "") -> None:
  """PNG with one row per crop: central slices of input, masked input, reconstruction.

  Args:
    path: output .png (parent folders are created).
    inputs, masked, reconstruction: [n, *spatial, C] (spatial 2-D or 3-D); each row
      shares the grey scale of its input's central slice.
    title: figure title, e.g. the step and loss.
  """
  os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
  rows = len(inputs)
  fig = mpl_figure.Figure(figsize=(3 * len(COLUMNS), 3 * rows + (0.4 if title else 0)))
  axes = fig.subplots(rows, len(COLUMNS), squeeze=False)
  for row in range(rows):
    reference = central_slice(inputs[row])
    low, high = float(reference.min()), float(reference.max())
    for col, (name, images) in enumerate(zip(COLUMNS, (inputs, masked, reconstruction))):
      ax = axes[row, col]
      ax.imshow(central_slice(images[row]), cmap="gray", vmin=low, vmax=max(high, low + 1e-6),
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(name)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
