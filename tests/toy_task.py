"""A tiny regression task for testing the engine (not part of the package).

Model: Dense -> BatchNorm -> Dropout -> ReLU -> Dense on 4 features, so a step
exercises parameters, non-parameter state (BatchNorm statistics) and the RNG.
"""

import time

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from neuroseg_jax import tasks
from neuroseg_jax.registry import Registry
from neuroseg_jax.training.task import Task
from neuroseg_jax.training import defaults

TOY_MODELS = Registry("toy model")


@TOY_MODELS.register("mlp")
class ToyMLP(nn.Module):
  """[B, 4] -> [B, 1]."""
  hidden: int = 16
  batch_norm: bool = True
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.hidden)(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(1)(nn.relu(x))


@tasks.TASKS.register("toy_regression")
class ToyRegression(Task):
  """Fits y = sum(sin(x)) with a small MLP; optional NaN injection for tests."""

  def __init__(self, config):
    super().__init__(config)
    self.model = TOY_MODELS.get(config.model.name)(batch_norm=config.model.batch_norm,
                                                   dropout=config.model.dropout)

  def init_variables(self, rng, batch):
    return self.model.init(rng, jnp.asarray(batch["x"]), train=False)

  def loss_fn(self, params, model_state, batch, rng, step):
    pred, updates = self.model.apply({"params": params, **model_state}, batch["x"], train=True,
                                     rngs={"dropout": rng}, mutable=["batch_stats"])
    loss = jnp.mean((pred[:, 0] - batch["y"]) ** 2)
    nan_step = self.config.model.nan_at_step
    loss = jnp.where((nan_step >= 0) & (step == nan_step), jnp.nan, loss)
    return loss, ({"mse": loss}, {**model_state, **updates})

  def make_example(self, position, rng):
    time.sleep(self.config.model.slow_examples)  # lets kill tests catch a run mid-way
    x = rng.normal(size=4).astype(np.float32)
    return {"x": x, "y": np.sin(x).sum().astype(np.float32)}

  def predict_fn(self, params, model_state, batch):
    return self.model.apply({"params": params, **model_state}, batch["x"], train=False)

  def evaluators(self, workdir):
    return [ToyEvaluator()]


class ToyEvaluator:

  def run(self, predict_fn):
    rng = np.random.default_rng(123)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    pred = predict_fn({"x": x})
    yield "val/mse", float(np.mean((pred[:, 0] - np.sin(x).sum(-1)) ** 2))


def toy_config(**overrides) -> ml_collections.ConfigDict:
  config = defaults.base_config()
  config.task = "toy_regression"
  config.batch_size = 8
  config.num_steps = 6
  config.log_every = 2
  config.checkpoint_every = 2
  # SGD: unlike Adam it does not amplify float rounding differences of tiny gradients,
  # so runs on different device counts stay within 1e-5 over several steps.
  config.optimizer.name = "sgd"
  config.optimizer.lr = 0.05
  config.optimizer.warmup_steps = 2
  config.model = ml_collections.ConfigDict({"name": "mlp", "nan_at_step": -1, "batch_norm": True,
                                          "dropout": 0.1, "slow_examples": 0.0})
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config
