"""Boundary maps of serial-section EM slices with a 2-D U-Net or UNETR ("em_slice_boundary").

Data: an image volume [D, H, W] (`data.images`: slice folder, TIFF stack, HDF5 / zarr
with `data.key`) and its labels (`data.labels`: instance labels or membrane maps,
`data.labels_kind`, read by `em_labels.open_labels`), both z-y-x. `data.train_slices`
and `data.val_slices` name the z-slices used ("0-14", "15-19", "0-4+10-12"). The
training slices are held in memory (labeled slices are few); the validation slices
are only read when evaluating.

Examples (`em_slice_crops.random_slice_crop`): a random `data.crop` [h, w] window of a
random training slice, augmented (dihedral, elastic, intensity), standardised by the
image volume's `intensity.intensity_stats` (as MAE pre-training feeds its encoder);
target = `boundary_map` of the augmented labels [h, w, 1] (membrane or the border
between touching instances = 1).

Model (`model.name`): "unet", the convolutional baseline (`models/unet.py`), or
"unetr", a 2-D UNETR on a ViT of `model.size` / `model.patch_size`, whose encoder
can start from an MAE pre-training run (`model.pretrained`, loaded through
`training/transfer.py`, which fails on any missing or mis-shaped array).

Loss: `loss.bce_weight` x class-balanced BCE + `loss.dice_weight` x soft Dice.

Evaluation (`evaluation/slice_evaluator.py`): sliding windows over the training and
validation slices, the per-slice watershed tuned on the training slices, scores
(adapted Rand error, VOI split / merge) on the validation slices. With
`eval.match_noise`, slices noisier than the training slices are first blurred to
their noise level (`noise_target`, `data/noise_matching.py`).
"""

from __future__ import annotations

import logging
import os

import fastremap
import jax
import jax.numpy as jnp
import numpy as np

from neuroseg_jax import tasks
from neuroseg_jax.data import em_labels, em_slice_crops, em_volumes, intensity, noise_matching
from neuroseg_jax.data.slice_ranges import parse_slices
from neuroseg_jax.errors import ConfigError, DataError
from neuroseg_jax.evaluation import slice_evaluator, slice_segmentation
from neuroseg_jax.losses import segmentation as seg_losses
from neuroseg_jax.models import unet, unetr, vit
from neuroseg_jax.registry import Registry
from neuroseg_jax.training import transfer
from neuroseg_jax.training.task import Task

MODELS: Registry = Registry("EM slice model")


@MODELS.register("unet")
def _unet(model_cfg, dtype):
  return unet.UNet(1, width=model_cfg.width, levels=model_cfg.levels, dtype=dtype)


@MODELS.register("unetr")
def _unetr(model_cfg, dtype):
  encoder = vit.ViTEncoder(**vit.VIT_SIZES.get(model_cfg.size),
                           patch_size=tuple(model_cfg.patch_size),
                           use_class_token=model_cfg.use_class_token, dtype=dtype)
  return unetr.UNETR(encoder, 1, decoder_width=model_cfg.decoder_width, dtype=dtype)


def build_model(model_cfg, dtype):
  """The boundary network: [B, h, w, 1] standardised images -> [B, h, w, 1] logits."""
  return MODELS.get(model_cfg.name)(model_cfg, dtype)


def read_slices(volume, indices) -> np.ndarray:
  """The z-slices `indices` of a [D, H, W] volume -> [len(indices), H, W] array."""
  return np.stack([np.asarray(volume[z]) for z in indices])


def compact_slice_labels(labels: np.ndarray) -> np.ndarray:
  """[N, H, W] labels -> uint32 ids 1..n per slice (0 kept), whatever the stored dtype."""
  return np.stack([fastremap.renumber(s, preserve_zero=True, in_place=False)[0]
                   .astype(np.uint32) for s in labels])


@tasks.TASKS.register("em_slice_boundary")
class EMSliceBoundary(Task):
  """2-D boundary network on labeled EM slices; per-slice watershed evaluation."""

  def __init__(self, config):
    super().__init__(config)
    data = config.data
    self.model = build_model(config.model, jnp.dtype(config.compute_dtype))
    self.crop = tuple(int(c) for c in data.crop)
    self.images = em_volumes.open_volume(data.images, data.key or None)
    self.labels = em_labels.open_labels(data.labels, data.labels_kind, data.labels_key or None)
    em_volumes.check_aligned(self.images, self.labels)
    depth = self.images.shape[0]
    self.train_index = parse_slices(data.train_slices, depth, "data.train_slices")
    self.val_index = parse_slices(data.val_slices, depth, "data.val_slices") \
        if data.val_slices else []
    if set(self.train_index) & set(self.val_index):
      raise ConfigError(f"data.val_slices: {data.val_slices} overlaps the training slices "
                        f"{data.train_slices}")
    self.train_images = read_slices(self.images, self.train_index)
    self.train_labels = compact_slice_labels(read_slices(self.labels, self.train_index))
    if not self.train_labels.any():
      raise DataError(data.labels, f"training slices {data.train_slices} hold no labeled pixel")
    self.stats = intensity.intensity_stats(self.images)
    # New slices noisier than these are blurred to this level before prediction.
    self.noise_target = (noise_matching.stack_noise_level(self.train_images)
                         if config.eval.match_noise else None)
    aug = data.augment
    self.augmentation = em_slice_crops.SliceAugmentation(
        dihedral=aug.dihedral, elastic_alpha=aug.elastic_alpha, elastic_sigma=aug.elastic_sigma,
        contrast=aug.contrast, brightness=aug.brightness, gamma=aug.gamma)
    logging.info("em_slice_boundary: %s %s, %d training slices %s, validation %s, crops %s, "
                 "model %s, intensity %s, noise %s", data.images, self.images.shape,
                 len(self.train_index), data.train_slices, data.val_slices or "none", self.crop,
                 config.model.name, self.stats, self.noise_target)

  # ---------------------------------------------------------------- data

  def make_example(self, position, rng):
    """{"image": [h, w, 1] standardised, "target": [h, w, 1] boundary in {0, 1}}."""
    del position
    crop = em_slice_crops.random_slice_crop(self.train_images, self.train_labels, self.crop,
                                            rng, self.stats, self.augmentation)
    return {"image": crop.image[..., None],
            "target": em_slice_crops.boundary_map(crop.labels)[..., None]}

  # ---------------------------------------------------------------- model

  def init_variables(self, rng, batch):
    return self.model.init({"params": rng}, jnp.asarray(batch["image"]), train=False)

  def load_pretrained(self, params, model_state):
    directory = self.config.model.pretrained
    if not directory:
      logging.info("em_slice_boundary: training from scratch (no model.pretrained)")
      return None
    if self.config.model.name != "unetr":
      raise ConfigError(f"model.pretrained: only a UNETR encoder can be pre-trained (MAE); "
                        f"model.name is {self.config.model.name!r}")
    variables, count = transfer.load_pretrained({"params": params}, directory,
                                                [("params/encoder", "params/encoder")])
    logging.info("em_slice_boundary: loaded %d MAE encoder arrays from %s", count, directory)
    return variables["params"], model_state

  def loss_fn(self, params, model_state, batch, rng, step):
    del rng, step
    logits, updates = self.model.apply({"params": params, **model_state}, batch["image"],
                                       train=True, mutable=["batch_stats"])
    target = batch["target"]
    weights = seg_losses.balanced_voxel_weights(target) if self.config.loss.balance else None
    loss, metrics = seg_losses.bce_dice_loss(
        logits, target, bce_weight=self.config.loss.bce_weight,
        dice_weight=self.config.loss.dice_weight, voxel_weights=weights)
    return loss, (metrics, {**model_state, **updates})

  def predict_fn(self, params, model_state, batch):
    """{"image": [B, h, w, 1] or [B, 1, h, w, 1] stored values} -> boundary probability,
    same shape (windows of `sliding_window_predict` carry a z axis of 1)."""
    image = jnp.asarray(batch["image"])
    windows = image.ndim == 5
    x = intensity.standardize(image[:, 0] if windows else image, self.stats)
    probability = jax.nn.sigmoid(self.model.apply({"params": params, **model_state}, x,
                                                  train=False))
    return probability[:, None] if windows else probability

  # ---------------------------------------------------------------- evaluation

  def evaluators(self, workdir):
    if not self.val_index:
      return []
    return [slice_evaluator.SliceEvaluator(
        self.images, self.labels, self.tune_index(), self.val_index, self.inference_settings(),
        watershed_grid(self.config.eval), os.path.join(workdir, "slice_evaluation.json"),
        noise_target=self.noise_target)]

  def inference_settings(self) -> slice_evaluator.InferenceSettings:
    """Sliding windows of the training crop, as the config's `eval` group asks."""
    cfg = self.config.eval
    return slice_evaluator.InferenceSettings(
        window=self.crop, stride=tuple(cfg.stride) or tuple(c // 2 for c in self.crop),
        padding=tuple(cfg.padding), batch_size=cfg.batch_size, flips=cfg.flip_tta)

  def tune_index(self) -> list[int]:
    """The slices the post-processing is tuned on: eval.tune_slices, else the training ones."""
    text = self.config.eval.tune_slices
    if not text:
      return self.train_index
    index = parse_slices(text, self.images.shape[0], "eval.tune_slices")
    if set(index) & set(self.val_index):
      raise ConfigError(f"eval.tune_slices: {text} overlaps the validation slices "
                        f"{self.config.data.val_slices}")
    return index


def watershed_grid(eval_config) -> slice_segmentation.WatershedGrid:
  """The post-processing grid of an em2d config's `eval` group."""
  return slice_segmentation.WatershedGrid(
      seed_threshold=tuple(eval_config.seed_thresholds),
      min_seed_size=tuple(eval_config.min_seed_sizes),
      smoothing=tuple(eval_config.smoothings), seed_erosion=tuple(eval_config.seed_erosions),
      merge_threshold=tuple(eval_config.merge_thresholds),
      seed_quantile=tuple(eval_config.seed_quantiles))
