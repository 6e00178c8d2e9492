"""How much of an MAE's masked-patch loss a model-free guess already explains.

For the validation crops of an MAE pre-training config (the same crops, scaling and
standardisation its evaluator uses) and random masks of its masking ratio, this
scores two predictions of the masked voxels with the plain (not norm-pix) masked
MSE, as a fraction of the predict-the-mean baseline (mean 0 after standardising):
  crop mean      every masked voxel = the mean of the crop's visible voxels;
  interpolation  normalised convolution: Gaussian-smoothed visible voxels divided by
                 the Gaussian-smoothed visibility mask (sigma per z, y, x axis).
An MAE that beats the interpolation has learned more than local smoothness; one
that cannot beat the mean on a noisy volume meets the volume's noise floor.

  python experiments/mae_interpolation_baseline.py \
      --config=configs/mae3d_pretrain.py:cpu,tomo,bin=2x2x2,norm_pix=False
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
from scipy import ndimage

import neuroseg_jax.tasks.mae_pretrain  # noqa: F401  (registers "mae_pretrain")
from neuroseg_jax import config_loading, tasks
from neuroseg_jax.models import mae as mae_lib
from neuroseg_jax.models import vit


def voxel_masks(num_crops: int, crop: tuple, patch: tuple, mask_ratio: float,
                seed: int) -> np.ndarray:
  """[num_crops, *crop] float, 1 where the voxel's patch is masked (random per crop)."""
  grid = vit.token_grid_shape(crop, patch)
  _, mask, _ = mae_lib.random_masking(jax.random.key(seed), num_crops, int(np.prod(grid)),
                                      mask_ratio)
  mask = np.asarray(mask).reshape(num_crops, *grid)
  for axis, size in enumerate(patch, start=1):
    mask = np.repeat(mask, size, axis=axis)
  return mask


def masked_fraction_of_baseline(prediction: np.ndarray, images: np.ndarray,
                                masks: np.ndarray) -> float:
  """sum((prediction - x)^2 over masked voxels) / sum(x^2 over masked voxels)."""
  return float((((prediction - images) ** 2) * masks).sum() / ((images ** 2) * masks).sum())


def interpolate(image: np.ndarray, visible: np.ndarray, sigma) -> np.ndarray:
  """Normalised convolution of one [*crop] image from its visible voxels."""
  smoothed = ndimage.gaussian_filter(image * visible, sigma, mode="nearest")
  weight = ndimage.gaussian_filter(visible, sigma, mode="nearest")
  fallback = (image * visible).sum() / max(visible.sum(), 1.0)
  return np.where(weight > 1e-3, smoothed / np.maximum(weight, 1e-3), fallback)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/mae3d_pretrain.py:cpu")
  parser.add_argument("--sigmas", default="0.5x1x1,0.5x2x2,1x3x3,1x5x5,2x8x8",
                      help="Gaussian sigmas (z x y x x) to try, comma-separated")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  config = config_loading.load_config(args.config)
  task = tasks.get_task(config.task)(config)
  images = task.validation_images()[..., 0].astype(np.float64)  # [N, *crop]
  masks = voxel_masks(len(images), task.crop, task.patch_size, config.model.mask_ratio,
                      args.seed)
  visible = 1.0 - masks
  crop_mean = (images * visible).sum(axis=tuple(range(1, images.ndim)), keepdims=True)
  crop_mean /= visible.sum(axis=tuple(range(1, images.ndim)), keepdims=True)
  rows = [{"prediction": "crop mean", "fraction_of_baseline": masked_fraction_of_baseline(
      np.broadcast_to(crop_mean, images.shape), images, masks)}]
  for text in args.sigmas.split(","):
    sigma = tuple(float(v) for v in text.split("x"))[-images.ndim + 1:]
    prediction = np.stack([interpolate(x, v, sigma) for x, v in zip(images, visible)])
    rows.append({"prediction": f"interpolation sigma {text}",
                 "fraction_of_baseline": masked_fraction_of_baseline(prediction, images, masks)})
  print(json.dumps({"config": args.config, "crops": len(images), "rows": rows}, indent=2))


if __name__ == "__main__":
  main()
