"""Supervised NeuroSeg-III / YOLOv8-seg instance segmentation (training and fine-tuning).

Data: labeled neuron images from any `NEURON_SOURCES` source, split into
training and validation images (a fixed hold-out or fold k of a k-fold split),
optionally limited to the first `num_train` training images (label budget).
Examples: augmented image + masks -> letterboxed fixed-shape targets.
Loss: YOLOv8 segmentation loss. Evaluation: neuron-level precision / recall /
F1 and mask mAP on the validation images. Fine-tuning: `config.pretrained`
names a TiCo workdir whose encoder backbone is loaded into the network.
"""

from __future__ import annotations

import logging
import os

import jax.numpy as jnp
import ml_collections
import numpy as np

from neuroseg_jax import model_folder
from neuroseg_jax import tasks
from neuroseg_jax.errors import ConfigError
from neuroseg_jax.data import instance_targets
from neuroseg_jax.data import neuron_datasets
from neuroseg_jax.data import transforms2d
from neuroseg_jax.evaluation import neuron_evaluator
from neuroseg_jax.evaluation import yolo_postprocess as post
from neuroseg_jax.losses import yolo_seg_loss
from neuroseg_jax.models import yolo_seg
from neuroseg_jax.training.task import Task
from neuroseg_jax.training import transfer

# (destination in this task's state, source in a TiCo pre-training state).
BACKBONE_TRANSFER = (("params/backbone", "params/backbone"),
                     ("model_state/batch_stats/backbone", "model_state/batch_stats/backbone"))


def split_samples(samples: list, data: ml_collections.ConfigDict) -> tuple[list, list]:
  """(train, validation) samples: the images named in `data.val_images` (names
  joined by "+", e.g. the authors' split "524691284_0+539670003_0"), else fold
  `data.fold` of `data.num_folds`, else the last `data.num_val` images are
  validation. Training keeps its first `data.num_train` images (-1: all), so smaller
  label budgets are subsets of larger ones."""
  if data.val_images:
    wanted = data.val_images.split("+")
    names = [s.name for s in samples]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
      raise ConfigError(f"data.val_images names {', '.join(unknown)}, not among the "
                        f"{len(names)} images ({', '.join(names)})")
    val_ids = {names.index(name) for name in wanted}
    if len(val_ids) == len(samples):
      raise ConfigError("data.val_images names every image: none is left to train on")
  elif data.fold >= 0:
    if not 0 <= data.fold < data.num_folds <= len(samples):
      raise ConfigError(f"data.fold={data.fold} needs 0 <= fold < num_folds={data.num_folds} "
                       f"<= number of images ({len(samples)})")
    folds = np.array_split(np.arange(len(samples)), data.num_folds)
    val_ids = set(folds[data.fold].tolist())
  else:
    if not 0 <= data.num_val < len(samples):
      raise ConfigError(f"data.num_val={data.num_val} must leave training images out of "
                        f"{len(samples)} (0: train on all of them)")
    val_ids = set(range(len(samples) - data.num_val, len(samples)))
  train = [s for i, s in enumerate(samples) if i not in val_ids]
  val = [s for i, s in enumerate(samples) if i in val_ids]
  if data.num_train > 0:
    if data.num_train > len(train):
      raise ConfigError(f"data.num_train={data.num_train} but only {len(train)} training images")
    train = train[:data.num_train]
  return train, val


def eval_sample(sample: neuron_datasets.LabeledImage, size: int) -> neuron_evaluator.EvalSample:
  """Letterboxes a labeled image for evaluation at input size `size`."""
  letterbox = instance_targets.Letterbox.fit(sample.image.shape[:2], size)
  boxed = transforms2d.resize_image_window(sample.image, letterbox.source_window(size),
                                           (size, size))
  return neuron_evaluator.EvalSample(sample.name, boxed.astype(np.float32), sample.masks,
                                     letterbox, display=sample.image[..., 0])


@tasks.TASKS.register("yolo_seg")
class YOLOSegTask(Task):
  """Instance segmentation of neurons with a YOLOSeg network."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.model = yolo_seg.build_yolo_seg({**config.model.to_dict(),
                                          "dtype": config.compute_dtype})
    samples = neuron_datasets.load_neuron_samples(config.data.source,
                                                  **config.data.source_args.to_dict())
    self.train_samples, self.val_samples = split_samples(samples, config.data)
    logging.info("yolo_seg: %d training and %d validation images (%s)",
                 len(self.train_samples), len(self.val_samples),
                 ", ".join(s.name for s in self.train_samples))
    self.augment = transforms2d.parse_transforms(config.data.augment)
    self.hyper = yolo_seg_loss.SegLossHyper(**config.loss.to_dict())

  def make_example(self, position: int, rng: np.random.Generator) -> dict:
    sample = self.train_samples[position % len(self.train_samples)]
    example = self.augment({"image": sample.image, "masks": sample.masks}, rng)
    targets = instance_targets.make_instance_targets(
        example["image"], example["masks"], self.config.data.image_size,
        self.config.data.max_instances, name=sample.name)
    return {k: targets[k] for k in ("image", "boxes", "classes", "valid", "masks")}

  def init_variables(self, rng, batch):
    return self.model.init({"params": rng, "drop_path": rng}, jnp.asarray(batch["image"]),
                           train=False)

  def load_pretrained(self, params, model_state):
    if not self.config.pretrained:
      return None
    if model_folder.is_model_folder(self.config.pretrained):  # a whole trained network
      folder = model_folder.read(self.config.pretrained)
      source = {"params": folder.variables["params"],
                "model_state": {"batch_stats": folder.variables["batch_stats"]}}
      variables = {"params": params, "model_state": model_state}
      for path in ("params", "model_state/batch_stats"):
        variables, count = transfer.copy_subtree(variables, source, path, path,
                                                 source_name=self.config.pretrained)
        logging.info("yolo_seg: loaded %d arrays of %s from model %s", count, path,
                     self.config.pretrained)
      return variables["params"], variables["model_state"]
    loaded, count = transfer.load_pretrained({"params": params, "model_state": model_state},
                                             self.config.pretrained, list(BACKBONE_TRANSFER))
    logging.info("yolo_seg: loaded %d pre-trained backbone arrays from %s", count,
                 self.config.pretrained)
    return loaded["params"], loaded["model_state"]

  def loss_fn(self, params, model_state, batch, rng, step):
    outputs, updates = self.model.apply(
        {"params": params, **model_state}, batch["image"], train=True,
        rngs={"drop_path": rng}, mutable=["batch_stats"])
    loss, metrics = yolo_seg_loss.yolo_seg_loss(outputs, batch, self.hyper)
    return loss, (metrics, {**model_state, **updates})

  def predict_fn(self, params, model_state, batch):
    return self.model.apply({"params": params, **model_state}, batch["image"], train=False)

  def evaluators(self, workdir: str):
    if not self.val_samples:  # trained on every labeled image
      return []
    size = self.config.eval.image_size or self.config.data.image_size
    figures = os.path.join(workdir, "figures") if self.config.eval.figures else None
    return [neuron_evaluator.NeuronSegEvaluator(
        [eval_sample(s, size) for s in self.val_samples], settings=self.postprocess_settings(),
        batch_size=self.config.eval.batch_size, figure_dir=figures)]

  def postprocess_settings(self) -> post.PostprocessSettings:
    """Evaluation post-processing: a low confidence (thresholds are chosen later) and
    the config's NMS IoU (`eval.nms_iou`)."""
    return post.PostprocessSettings(conf_threshold=post.LOW_CONFIDENCE,
                                    nms_iou=self.config.eval.nms_iou)
