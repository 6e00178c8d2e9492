"""TiCo self-supervised pre-training of the NeuroSeg-III encoder ("tico_pretrain").

Each example is one unlabeled image seen through two random augmentations
(`data.augment`, a `transforms2d` string). The online branch (a `TiCoEncoder`,
the only thing with gradients) embeds both views; the target branch, a momentum
(EMA) copy of encoder + head kept in the model state, embeds them too, and its
outputs are constants.

The loss is symmetrised (`loss.symmetric`, default True), as in BYOL: rows
[online(view1); online(view2)] are paired with [target(view2); target(view1)]
and fed to ONE `tico_loss` call, i.e. the mean of the two directions, with the
running covariance updated once per step from all 2B online projections. With
`symmetric=False` only online(view1) vs target(view2) is used (the lightly
TiCo example).

Model state: {"batch_stats": online BatchNorm statistics, "target": {"params",
"batch_stats"} of the momentum branch, "covariance": [D, D] TiCo buffer}.
After every optimizer update the target params move towards the online params
with a momentum rising from `loss.momentum_base` (0.996) to 1 on a cosine over
`num_steps`. The target branch runs in training mode (batch statistics, its
own running averages) without drop-path.

params["backbone"] / model_state["batch_stats"]["backbone"] load 1:1 into
YOLOSeg built from the same `config.model` (see training/transfer.py).

Config: model.{preset | scale, block, drop_path_rate, head_hidden, head_out};
data.{source, window, seed, simulator, image_size, channels, normalization,
augment}; loss.{beta, rho, symmetric, momentum_base, momentum_final}.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from neuroseg_jax import tasks
from neuroseg_jax.data import transforms2d, unlabeled_images
from neuroseg_jax.data.summary_images import CHANNEL_NORMALIZERS
from neuroseg_jax.losses import tico as tico_lib
from neuroseg_jax.models.tico import build_tico_encoder, head_dims
from neuroseg_jax.training.task import Task


def _fit(image: np.ndarray, size: int) -> np.ndarray:
  """[h, w, C] -> [size, size, C]: the whole image resized (no-op at the right size)."""
  if image.shape[:2] == (size, size):
    return image
  return transforms2d.resize_image_window(image, (0.0, 0.0) + image.shape[:2], (size, size))


@tasks.TASKS.register("tico_pretrain")
class TiCoPretrain(Task):
  """Two views per unlabeled image, online vs momentum branch, TiCo loss."""

  def __init__(self, config):
    super().__init__(config)
    model_config = {**config.model.to_dict(), "dtype": config.compute_dtype}
    self.model = build_tico_encoder(model_config)
    self.target_model = build_tico_encoder(model_config, drop_path_rate=0.0)
    self.augment = transforms2d.parse_transforms(config.data.augment)
    normalize = CHANNEL_NORMALIZERS.get(config.data.normalization)
    raw = unlabeled_images.load_unlabeled_images(config.data.source, config.data)
    self.images = [normalize(image) for image in raw]
    logging.info("tico_pretrain: %d unlabeled images from %s", len(self.images),
                 config.data.source)

  # ---------------------------------------------------------------- data

  def image_index(self, position: int) -> int:
    """Epochs without replacement: position p reads image perm_e[p mod n], e = p // n,
    perm_e a permutation drawn from (seed, e). An image then repeats within a batch
    only across an epoch boundary (TiCo would contrast the copies as negatives)."""
    epoch, slot = divmod(position, len(self.images))
    order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.images))
    return int(order[slot])

  def make_example(self, position, rng):
    """{"view1", "view2"}: [S, S, C] float32, S = data.image_size, C = data.channels."""
    data = self.config.data
    image = self.images[self.image_index(position)][..., None]
    views = {}
    for name in ("view1", "view2"):
      view = _fit(self.augment({"image": image}, rng)["image"], data.image_size)
      views[name] = np.repeat(view, data.channels, axis=-1).astype(np.float32)
    return views

  # ---------------------------------------------------------------- model

  def init_variables(self, rng, batch):
    return self.model.init({"params": rng}, jnp.asarray(batch["view1"]), train=False)

  def initial_model_state(self, params, model_state):
    out_dim = head_dims(self.model.scale, self.model.head_hidden, self.model.head_out)[1]
    return {**model_state,
            "target": {"params": jax.tree.map(jnp.copy, params),
                       "batch_stats": jax.tree.map(jnp.copy, model_state["batch_stats"])},
            "covariance": jnp.zeros((out_dim, out_dim), jnp.float32)}

  def _branch_inputs(self, batch):
    """(online input [kB, S, S, C], target input [kB, S, S, C]), rows paired."""
    view1, view2 = batch["view1"], batch["view2"]
    if self.config.loss.symmetric:
      return jnp.concatenate([view1, view2]), jnp.concatenate([view2, view1])
    return view1, view2

  def loss_fn(self, params, model_state, batch, rng, step):
    cfg = self.config.loss
    online_in, target_in = self._branch_inputs(batch)
    online, updates = self.model.apply(
        {"params": params, "batch_stats": model_state["batch_stats"]}, online_in, train=True,
        rngs={"drop_path": rng}, mutable=["batch_stats"])
    target, target_updates = self.target_model.apply(
        model_state["target"], target_in, train=True, mutable=["batch_stats"])
    loss, covariance, metrics = tico_lib.tico_loss(
        online, jax.lax.stop_gradient(target), model_state["covariance"], cfg.beta, cfg.rho)
    normalized = tico_lib.l2_normalize(online.astype(jnp.float32))
    metrics = {**metrics,
               # ~1/sqrt(D) for spread-out embeddings, -> 0 under collapse.
               "embedding_std": jnp.mean(jnp.std(normalized, axis=0)),
               "momentum": self.momentum(step)}
    new_state = {"batch_stats": updates["batch_stats"], "covariance": covariance,
                 "target": {"params": model_state["target"]["params"],
                            "batch_stats": target_updates["batch_stats"]}}
    return loss, (metrics, new_state)

  def momentum(self, step):
    cfg = self.config.loss
    return tico_lib.cosine_momentum(step, self.config.num_steps, cfg.momentum_base,
                                    cfg.momentum_final)

  def after_update(self, params, model_state, step):
    target = model_state["target"]
    moved = tico_lib.ema_update(target["params"], params, self.momentum(step))
    return {**model_state, "target": {**target, "params": moved}}

  def predict_fn(self, params, model_state, batch):
    """{"image": [B, S, S, C]} -> pooled backbone features [B, C_sppf] of the online encoder."""
    return self.model.apply({"params": params, "batch_stats": model_state["batch_stats"]},
                            batch["image"], train=False, method="features")
