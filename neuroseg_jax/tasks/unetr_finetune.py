"""UNETR fine-tuning for 3D instance segmentation ("unetr_finetune").

Data: one labeled volume (raw + instance labels, [D, H, W] z-y-x) from
`em_sources.EM_SOURCES` (`data.source`: the EM simulator, SNEMI3D or MitoEM layouts,
"file": any TIFF/HDF5/slice-folder pair at `data.path` + `data.labels_path`), split
in z at `data.split_z`: slices z < split_z are the training region, z >= split_z the
held-out test region (a negative split_z counts from the end).

Label fraction: `data.label_fraction` f in (0, 1] keeps the FIRST round(f * split_z)
slices of the training region (a contiguous slab, as when only part of a stack is
annotated); training crops are drawn inside it only. The slab must hold at least one
crop depth.

Examples: `volume_crops.random_crop` of `data.crop` (d, h, w) inside the labeled slab,
the image mapped to [0, 1] (clipped) by the raw volume's 0.5 / 99.5 intensity
percentiles; with `data.augment`, flips of every axis, in-plane 90-degree rotations and
+-`data.intensity_jitter` contrast / brightness jitter (image only); then standardised
by the volume's `intensity.intensity_stats`, exactly as MAE pre-training
(tasks/mae_pretrain.py) feeds the encoder (`intensity.standardize`). predict_fn applies
the same function to the volume's stored values.

Targets (`TARGETS`, `data.target`), computed per crop after augmentation:
  * affinities: K channels for `data.offsets` (default the 3 nearest neighbours) from
    the labels eroded by `data.erosion` (1) in-plane; pairs leaving the crop are masked.
  * binary_contour: foreground + in-plane contour of width `data.contour_width` (MitoEM "BC").
  * binary_contour_distance: BC + normalised distance transform in [-1, 1] ("BCD").
Loss: `loss.bce_weight` x BCE (class-balanced voxel weights if `loss.balance`) +
`loss.dice_weight` x soft Dice on the sigmoid channels (defaults 1 and 0.5, the EM-MAE
reference), + `loss.distance_weight` x MSE of tanh(output) for the distance channel.
predict_fn returns probabilities [B, d, h, w, K]: sigmoid of every channel, except the
distance channel, returned as (1 + tanh) / 2 so that all outputs lie in [0, 1].

Model: UNETR (`models/unetr.py`) on a ViTEncoder of `model.size` and `model.patch_size`.
`model.pretrained` = an MAE pre-training workdir (or its checkpoints/ dir): its
params["encoder"] is copied into the UNETR's encoder through `training/transfer.py`,
which counts and logs the arrays and fails on any missing, extra or mis-shaped array.
Empty = trained from scratch (same network, same seed).

Evaluation on the test region: sliding-window inference (`eval.*`), then
NeuronEvaluator (affinities: val/arand, val/voi_split, val/voi_merge with the waterz
threshold cross-fitted between the region's halves; val/arand_oracle) or
MitochondriaEvaluator (BC / BCD: val/ap75, val/ap50, val/dice, val/iou).
"""

from __future__ import annotations

import logging
import os

import fastremap
import jax
import jax.numpy as jnp
import numpy as np

from neuroseg_jax import tasks
from neuroseg_jax.data import affinities, em_sources, em_volumes, intensity, volume_crops
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import em_evaluators
from neuroseg_jax.losses import segmentation as seg_losses
from neuroseg_jax.models import unetr, vit
from neuroseg_jax.registry import Registry
from neuroseg_jax.training.task import Task
from neuroseg_jax.training import transfer

TARGETS: Registry = Registry("UNETR target")


def split_regions(depth: int, split_z: int, label_fraction: float, crop_depth: int):
  """(labeled training slices [0, n), test slices [split, depth)) as (n, split)."""
  split = split_z + depth if split_z < 0 else split_z
  if not 0 < split < depth:
    raise DataError("data.split_z", f"{split_z} leaves no training or no test slices "
                    f"in a volume of depth {depth}")
  if not 0 < label_fraction <= 1:
    raise DataError("data.label_fraction", f"expected a fraction in (0, 1], got {label_fraction}")
  labeled = int(round(label_fraction * split))
  if labeled < crop_depth:
    raise DataError("data.label_fraction", f"{label_fraction} of {split} training slices is "
                    f"{labeled} slices, fewer than the crop depth {crop_depth}")
  return labeled, split


def compact_labels(labels: np.ndarray) -> np.ndarray:
  """[d, h, w] instance labels (any integer dtype) -> uint32 ids 1..n, 0 kept.

  Also sidesteps 64-bit labels (MitoEM's uint64), which `affinities.erode_labels` mishandles
  (its scipy filters lose the 64-bit sentinel value).
  """
  labels = affinities.check_label_volume(labels)
  return fastremap.renumber(labels, preserve_zero=True, in_place=False)[0].astype(np.uint32)


# ---------------------------------------------------------------- targets


def _bce_dice(logits, target, mask, loss_cfg):
  weights = seg_losses.balanced_voxel_weights(target) if loss_cfg.balance else None
  return seg_losses.bce_dice_loss(logits, target, bce_weight=loss_cfg.bce_weight,
                                  dice_weight=loss_cfg.dice_weight, voxel_weights=weights,
                                  mask=mask)


@TARGETS.register("affinities")
class AffinityTarget:
  """Affinities of `data.offsets` from eroded labels; NeuronEvaluator (waterz, ARAND)."""

  def __init__(self, config):
    self.config = config
    self.offsets = tuple(tuple(int(v) for v in o) for o in config.data.offsets)
    if self.offsets[:3] != affinities.NEAREST_NEIGHBOUR_OFFSETS:
      raise DataError("data.offsets", "the first 3 offsets must be the nearest neighbours "
                      f"{affinities.NEAREST_NEIGHBOUR_OFFSETS} (waterz), got {self.offsets}")
    self.channels = len(self.offsets)

  def make(self, labels: np.ndarray):
    """[d, h, w] labels -> (targets [d, h, w, K], valid-pair mask [d, h, w, K])."""
    eroded = affinities.erode_labels(compact_labels(labels), self.config.data.erosion)
    return (affinities.affinities_from_labels(eroded, self.offsets),
            affinities.affinity_valid_mask(labels.shape, self.offsets))

  def loss(self, logits, target, mask):
    return _bce_dice(logits, target, mask, self.config.loss)

  def activate(self, logits):
    return jax.nn.sigmoid(logits)

  def evaluator(self, inference, labels):
    cfg = self.config.eval
    return em_evaluators.NeuronEvaluator(inference, labels, offsets=self.offsets,
                                         thresholds=tuple(cfg.thresholds), min_size=cfg.min_size)


@TARGETS.register("binary_contour")
class BinaryContourTarget:
  """MitoEM foreground + contour (+ distance); MitochondriaEvaluator (watershed, AP-75)."""
  with_distance = False

  def __init__(self, config):
    self.config = config
    self.channels = 3 if self.with_distance else 2

  def make(self, labels: np.ndarray):
    """[d, h, w] labels -> (targets [d, h, w, 2 or 3], mask [d, h, w, 1] of ones)."""
    target = affinities.binary_contour_targets(labels, self.config.data.contour_width,
                                               self.with_distance)
    return target, np.ones((*labels.shape, 1), np.float32)

  def loss(self, logits, target, mask):
    loss, metrics = _bce_dice(logits[..., :2], target[..., :2], mask, self.config.loss)
    if self.with_distance:
      mse = seg_losses.weighted_mse_tanh(logits[..., 2:], target[..., 2:], mask)
      loss, metrics = loss + self.config.loss.distance_weight * mse, {**metrics, "distance_mse": mse}
    return loss, metrics

  def activate(self, logits):
    probs = jax.nn.sigmoid(logits[..., :2])
    if not self.with_distance:
      return probs
    return jnp.concatenate([probs, 0.5 * (1.0 + jnp.tanh(logits[..., 2:]))], axis=-1)

  def evaluator(self, inference, labels):
    return em_evaluators.MitochondriaEvaluator(
        inference, labels, num_outputs=self.channels,
        watershed_options=self.config.eval.watershed.to_dict())


@TARGETS.register("binary_contour_distance")
class BinaryContourDistanceTarget(BinaryContourTarget):
  with_distance = True


# ---------------------------------------------------------------- model


def build_unetr(model_cfg, out_channels: int, dtype) -> unetr.UNETR:
  """UNETR on a ViTEncoder of `model_cfg.size` / patch_size (encoder = MAE's encoder)."""
  encoder = vit.ViTEncoder(**vit.VIT_SIZES.get(model_cfg.size),
                           patch_size=tuple(model_cfg.patch_size),
                           use_class_token=model_cfg.use_class_token,
                           dropout_rate=model_cfg.dropout_rate, dtype=dtype)
  return unetr.UNETR(encoder, out_channels, decoder_width=model_cfg.decoder_width,
                     skip_blocks=tuple(model_cfg.skip_blocks) or None,
                     use_position_embedding=model_cfg.use_position_embedding, dtype=dtype)


def load_encoder(params: dict, directory: str) -> tuple[dict, int]:
  """params with params["encoder"] <- the checkpoint's params["encoder"]; (params, #arrays).

  Raises transfer.TransferError listing every missing, unexpected or mis-shaped array.
  """
  variables, count = transfer.load_pretrained({"params": params}, directory,
                                              [("params/encoder", "params/encoder")])
  return variables["params"], count


@tasks.TASKS.register("unetr_finetune")
class UNETRFinetune(Task):
  """UNETR fine-tuning on random labeled crops; evaluation on the held-out z-range."""

  def __init__(self, config):
    super().__init__(config)
    data = config.data
    self.target = TARGETS.get(data.target)(config)
    self.model = build_unetr(config.model, self.target.channels, jnp.dtype(config.compute_dtype))
    self.crop = tuple(int(c) for c in data.crop)
    simulator = data.simulator
    self.volume = em_sources.open_source(data.source, em_sources.SourceSpec(
        path=data.path, labels_path=data.labels_path, simulator_shape=tuple(simulator.shape),
        simulator_seed=simulator.seed, simulator_zoom=simulator.zoom,
        simulator_labels=simulator.labels))
    if self.volume.labels is None:
      raise DataError(data.source, "the volume has no instance labels to fine-tune on")
    shape = self.volume.raw.shape
    self.labeled_depth, self.split = split_regions(shape[0], data.split_z, data.label_fraction,
                                                   self.crop[0])
    self.train_raw = em_volumes.AxisRange(self.volume.raw, 0, self.labeled_depth)
    self.train_labels = em_volumes.AxisRange(self.volume.labels, 0, self.labeled_depth)
    volume_crops.crop_origin(self.train_raw.shape, self.crop, np.random.default_rng(0),
                             f"{data.source} labeled slab")  # fails now if crops cannot fit
    self.augmentation = volume_crops.CropAugmentation(
        contrast=(1 - data.intensity_jitter, 1 + data.intensity_jitter),
        brightness=(-data.intensity_jitter, data.intensity_jitter)) if data.augment else None
    self.stats = intensity.intensity_stats(self.volume.raw)
    logging.info("unetr_finetune: %s volume %s, training crops %s from z [0, %d), test z [%d, %d),"
                 " intensity %s", data.source, shape, self.crop, self.labeled_depth, self.split,
                 shape[0], self.stats)

  # ---------------------------------------------------------------- data

  def make_example(self, position, rng):
    """{"image": [d, h, w, 1] standardised, "target": [d, h, w, K], "mask": [d, h, w, K or 1]}."""
    del position
    crop = volume_crops.random_crop(self.train_raw, self.crop, rng, labels=(self.train_labels,),
                                    augmentation=self.augmentation, intensity=self.stats)
    target, mask = self.target.make(affinities.check_label_volume(crop.labels[0]))
    return {"image": crop.raw[..., None], "target": target, "mask": mask}

  # ---------------------------------------------------------------- model

  def init_variables(self, rng, batch):
    return self.model.init({"params": rng}, jnp.asarray(batch["image"]), train=False)

  def load_pretrained(self, params, model_state):
    directory = self.config.model.pretrained
    if not directory:
      logging.info("unetr_finetune: training from scratch (no model.pretrained)")
      return None
    params, count = load_encoder(params, directory)
    logging.info("unetr_finetune: loaded %d pre-trained encoder arrays from %s", count, directory)
    return params, model_state

  def loss_fn(self, params, model_state, batch, rng, step):
    del step
    logits, updates = self.model.apply({"params": params, **model_state}, batch["image"],
                                       train=True, rngs={"dropout": rng},
                                       mutable=["batch_stats"])
    loss, metrics = self.target.loss(logits, batch["target"], batch["mask"])
    return loss, (metrics, {**model_state, **updates})

  def predict_fn(self, params, model_state, batch):
    """{"image": [B, d, h, w, 1] stored values} -> probabilities [B, d, h, w, K]."""
    image = intensity.standardize(jnp.asarray(batch["image"]), self.stats)  # as training crops
    logits = self.model.apply({"params": params, **model_state}, image, train=False)
    return self.target.activate(logits)

  # ---------------------------------------------------------------- evaluation

  def evaluators(self, workdir):
    cfg = self.config.eval
    window = tuple(cfg.window) or self.crop
    depth = self.volume.raw.shape[0]
    inference = em_evaluators.VolumeInference(
        em_volumes.AxisRange(self.volume.raw, self.split, depth), window,
        tuple(cfg.stride) or tuple(max(1, n // 2) for n in window),
        padding=tuple(cfg.padding) or (0, 0, 0), batch_size=cfg.batch_size,
        flip_axes=tuple(cfg.flip_axes), input_key="image",
        scratch_dir=os.path.join(workdir, "eval_scratch") if cfg.stream else None)
    labels = np.asarray(self.volume.labels[self.split:depth])
    return [self.target.evaluator(inference, labels)]
