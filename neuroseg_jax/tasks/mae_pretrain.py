"""Masked-autoencoder self-pre-training of a ViT on an unlabeled EM volume ("mae_pretrain").

Data: the raw [D, H, W] volume of `em_sources.EM_SOURCES` (`data.source`: the EM
simulator, SNEMI3D or MitoEM layouts at `data.path`, or "file": any TIFF stack /
HDF5 dataset (`data.key`) / slice folder at `data.path`), mean-pooled
by `data.bin` (z, y, x) factors when they are not all 1 (`em_volumes.BinnedVolume`),
then low-pass filtered by a Gaussian of `data.lowpass_sigma` (z, y, x voxels) when it
is not all 0 (`em_volumes.GaussianFilteredVolume`; for noise-dominated tomograms).
With `data.match_noise_to` (z-slices such as "30-44", the images a fine-tuning run will
train on), every slice noisier than those is blurred down to their median noise level
(`noise_matching.match_slices`, as fine-tuning's evaluation does with new slices), so
the encoder learns from inputs as clean as the ones it will be fine-tuned and used on.
The last `data.val_slices` slices along axis `data.val_axis` (0 = z, the default;
1 = y, 2 = x, for volumes whose z-ends hold no structure, such as a tomogram's ice)
are held out for validation; training crops come from the slices before them. Crops
of `data.crop` ((d, h, w) for a 3D ViT, (h, w) for a 2D one, taken from single
slices) are scaled to about [0, 1] by the volume's 0.5 / 99.5 intensity
percentiles, augmented (`data.augment`: flips, in-plane
rot90, contrast / brightness / gamma jitter), then standardised with the mean and
standard deviation of the scaled volume (`intensity.standardize`), as MAE
standardises ImageNet pixels. Fine-tuning should feed its encoder the same way.
(Unstandardised [0, 1] crops carry little variance next to the unit-amplitude
position embedding, and an MAE trained on them is slow to leave the
predict-the-mean loss: RESULTS.md, "MAE pre-training on EM volumes".)

Model: `models.mae.MAE` with a ViTEncoder of `model.size` and `model.patch_size`
(its params["encoder"] is what UNETR fine-tuning loads), a decoder of
`model.decoder_width / decoder_depth / decoder_num_heads`, masking
`model.mask_ratio` of the tokens of every example (a new random subset per
example and per step, from the step's rng).

Loss: MSE on masked patches, of per-patch normalised targets when `loss.norm_pix`.
Metrics: train/mean_baseline, the same loss for a model that predicts the mean
target (~1 with norm-pix; the dataset mean, 0 after standardising, otherwise).

Evaluation (`ReconstructionEvaluator`): `data.val_crops` fixed validation crops
with fixed masks -> val/reconstruction_loss, val/mean_baseline,
val/loss_over_baseline, and WORKDIR/figures/reconstructions.png (central slices of
input, masked input, reconstruction for `eval.figure_crops` crops).
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from neuroseg_jax import tasks
from neuroseg_jax.data import (em_sources, em_volumes, intensity, noise_matching,
                               slice_ranges, volume_crops)
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import reconstruction_figures
from neuroseg_jax.losses import reconstruction
from neuroseg_jax.models import mae as mae_lib
from neuroseg_jax.models import vit
from neuroseg_jax.training.task import Task

def build_mae(config) -> mae_lib.MAE:
  """MAE from `config.model` (and `config.compute_dtype`)."""
  cfg = config.model
  return mae_lib.MAE(**vit.VIT_SIZES.get(cfg.size), patch_size=tuple(cfg.patch_size),
                     use_class_token=cfg.use_class_token, decoder_width=cfg.decoder_width,
                     decoder_depth=cfg.decoder_depth, decoder_num_heads=cfg.decoder_num_heads,
                     mask_ratio=cfg.mask_ratio, dtype=jnp.dtype(config.compute_dtype))


def reconstruction_outputs(image: jax.Array, prediction: jax.Array, mask: jax.Array,
                           patch_size, norm_pix: bool) -> dict:
  """One batch's loss sums and display images (jit-able; used inside predict_fn).

  Args:
    image: [B, *crop, 1] standardised crops; prediction: [B, N, P]; mask: [B, N].

  Returns:
    {"masked_error": [B] sum over masked patches of the per-patch MSE,
     "baseline_error": [B] the same for predicting the mean target (0 after
       norm-pix or after standardising the data),
     "masked_patches": [B] number of masked patches,
     "masked_input", "reconstruction": [B, *crop, 1] (see reconstruction_panels)}.
  """
  targets = reconstruction.reconstruction_targets(mae_lib.patchify(image, patch_size), norm_pix)
  masked_input, recon = reconstruction_figures.reconstruction_panels(image, prediction, mask,
                                                                     patch_size, norm_pix)
  return {"masked_error": jnp.sum(reconstruction.per_patch_mse(prediction, targets) * mask, 1),
          "baseline_error": jnp.sum(reconstruction.per_patch_mse(0.0, targets) * mask, 1),
          "masked_patches": jnp.sum(mask, 1), "masked_input": masked_input, "reconstruction": recon}


class ReconstructionEvaluator:
  """Masked reconstruction loss on fixed crops, its predict-the-mean baseline, and a figure.

  `predict_fn({"image": [b, *crop, 1]})` returns `reconstruction_outputs` (fixed masks).
  """

  def __init__(self, images: np.ndarray, batch_size: int, figure_path: str, figure_crops: int):
    self.images, self.batch_size = images, batch_size
    self.figure_path, self.figure_crops = figure_path, figure_crops

  def run(self, predict_fn):
    outputs = [predict_fn({"image": self.images[i:i + self.batch_size]})
               for i in range(0, len(self.images), self.batch_size)]
    total = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    count = max(float(total["masked_patches"].sum()), 1.0)
    loss, baseline = total["masked_error"].sum() / count, total["baseline_error"].sum() / count
    if self.figure_crops:
      k = self.figure_crops
      reconstruction_figures.save_reconstruction_figure(
          self.figure_path, self.images[:k], total["masked_input"][:k], total["reconstruction"][:k],
          title=f"masked MSE {loss:.4f} (predict-the-mean {baseline:.4f})")
    return [("val/reconstruction_loss", float(loss)), ("val/mean_baseline", float(baseline)),
            ("val/loss_over_baseline", float(loss / max(baseline, 1e-12)))]


@tasks.TASKS.register("mae_pretrain")
class MAEPretrain(Task):
  """Random crops of one volume, MAE forward on visible tokens, masked-patch MSE."""

  def __init__(self, config):
    super().__init__(config)
    data = config.data
    self.model = build_mae(config)
    self.patch_size = tuple(config.model.patch_size)
    self.crop = tuple(int(c) for c in data.crop)
    if len(self.crop) != len(self.patch_size):
      raise DataError("data.crop", f"crop {self.crop} and patch size {self.patch_size} "
                      "must both be 3-D (d, h, w) or 2-D (h, w)")
    vit.token_grid_shape(self.crop, self.patch_size)  # DataError unless tileable
    volume = em_sources.open_source(data.source, em_sources.SourceSpec(
        path=data.path, key=data.key, simulator_shape=tuple(data.simulator.shape),
        simulator_seed=data.simulator.seed, simulator_zoom=data.simulator.zoom)).raw
    if tuple(data.bin) != (1, 1, 1):
      volume = em_volumes.BinnedVolume(volume, data.bin)
    if any(data.lowpass_sigma):
      volume = em_volumes.GaussianFilteredVolume(volume, data.lowpass_sigma)
    if data.match_noise_to:
      volume = self._noise_matched(volume, data.match_noise_to)
    if data.val_axis not in (0, 1, 2):
      raise DataError("data.val_axis", f"expected 0 (z), 1 (y) or 2 (x), got {data.val_axis}")
    axis, size = data.val_axis, volume.shape[data.val_axis]
    split = size - data.val_slices
    self.train_volume = em_volumes.AxisRange(volume, 0, split, axis)
    self.val_volume = (em_volumes.AxisRange(volume, split, size, axis) if data.val_slices
                       else self.train_volume)
    self.stats = intensity.intensity_stats(volume)
    self.augmentation = volume_crops.CropAugmentation(
        flips=data.augment.flips, rot90=data.augment.rot90,
        contrast=tuple(data.augment.contrast), brightness=tuple(data.augment.brightness),
        gamma=tuple(data.augment.gamma))
    logging.info("mae_pretrain: %s volume %s, train %s [0, %d), validation [%d, %d), crops %s, "
                 "intensity %s", data.source, volume.shape, "zyx"[axis], split,
                 split if data.val_slices else 0, size, self.crop, self.stats)

  @staticmethod
  def _noise_matched(volume, reference_slices: str) -> np.ndarray:
    """[D, H, W] float32 in memory: each slice blurred to the median noise level of the
    `reference_slices` ("30-44"), or left as stored when it is no noisier."""
    stack = np.asarray(volume[:])
    index = slice_ranges.parse_slices(reference_slices, stack.shape[0], "data.match_noise_to")
    target = noise_matching.stack_noise_level(stack[index])
    matched, sigmas = noise_matching.match_slices(stack, target)
    logging.info("mae_pretrain: %d of %d slices blurred to noise level %.4f (slices %s), "
                 "sigma up to %.2f px", sum(s > 0 for s in sigmas), len(sigmas), target,
                 reference_slices, max(sigmas))
    return matched

  def _crop(self, volume, rng, augmentation=None) -> np.ndarray:
    """[*crop, 1] float32 crop, standardised: about zero mean and unit variance over the volume."""
    crop = volume_crops.random_crop(volume, self.crop, rng, augmentation=augmentation,
                                    intensity=self.stats)
    return crop.raw[..., None]

  def make_example(self, position, rng):
    """{"image": [*crop, 1] float32}."""
    del position
    return {"image": self._crop(self.train_volume, rng, self.augmentation)}

  def validation_images(self) -> np.ndarray:
    """[val_crops, *crop, 1]: fixed crops of the validation slices (no augmentation)."""
    rng = np.random.default_rng([self.config.seed, 7919])
    return np.stack([self._crop(self.val_volume, rng) for _ in range(self.config.data.val_crops)])

  def init_variables(self, rng, batch):
    rngs = {"params": rng, "masking": jax.random.fold_in(rng, 1)}
    return self.model.init(rngs, jnp.asarray(batch["image"]))

  def loss_fn(self, params, model_state, batch, rng, step):
    del step
    output = self.model.apply({"params": params, **model_state}, batch["image"], train=True,
                              rngs={"masking": rng})
    patches = mae_lib.patchify(batch["image"], self.patch_size)
    norm_pix = self.config.loss.norm_pix
    loss = reconstruction.masked_reconstruction_loss(output.prediction, patches, output.mask,
                                                     norm_pix)
    # The data are standardised, so their mean is 0 (the non-norm-pix baseline prediction).
    baseline = reconstruction.predict_the_mean_loss(patches, output.mask, norm_pix, data_mean=0.0)
    return loss, ({"mean_baseline": baseline}, model_state)

  def predict_fn(self, params, model_state, batch):
    """{"image": [B, *crop, 1]} -> `reconstruction_outputs` under fixed masks (rng = seed)."""
    output = self.model.apply({"params": params, **model_state}, batch["image"],
                              rngs={"masking": jax.random.key(self.config.seed)})
    return reconstruction_outputs(batch["image"], output.prediction, output.mask, self.patch_size,
                                  self.config.loss.norm_pix)

  def evaluators(self, workdir):
    cfg = self.config.eval
    return [ReconstructionEvaluator(self.validation_images(), cfg.batch_size,
                                    os.path.join(workdir, "figures", "reconstructions.png"),
                                    cfg.figure_crops)]
