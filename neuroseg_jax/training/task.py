"""The Task interface: what the training engine needs from a task family.

A task binds a model, its loss, its data and its evaluators for one kind of
training (supervised instance segmentation, TiCo, MAE, UNETR fine-tuning...).
The engine in `training/loop.py` owns devices, optimizer, checkpoints and
logging, and calls only the methods below. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import abc
from typing import Any, Iterable, Iterator, Protocol

import jax
import ml_collections
import numpy as np

from neuroseg_jax.training import input_pipeline

PyTree = Any
Metrics = dict[str, jax.Array]


class Evaluator(Protocol):
  """Scores a model through its predict function.

  `predict_fn(batch: dict of numpy arrays) -> outputs (numpy pytree)`.
  """

  def run(self, predict_fn) -> Iterable[tuple[str, float]]:
    ...


class Task(abc.ABC):
  """Base class; subclasses are registered in `neuroseg_jax.tasks.TASKS`."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def init_variables(self, rng: jax.Array, batch: dict) -> dict:
    """All Flax variable collections for a host-local example `batch`."""

  def initial_model_state(self, params: PyTree, model_state: PyTree) -> PyTree:
    """Non-parameter state at step 0 (adds e.g. momentum copies, loss buffers)."""
    del params
    return model_state

  def load_pretrained(self, params: PyTree, model_state: PyTree) -> tuple[PyTree, PyTree] | None:
    """Host-side hook at the start of a fresh run (not on resume).

    Receives step-0 params and model state as numpy; returns them with
    pre-trained weights loaded, or None when the task loads nothing.
    """
    del params, model_state
    return None

  @abc.abstractmethod
  def loss_fn(self, params: PyTree, model_state: PyTree, batch: dict, rng: jax.Array,
              step: jax.Array) -> tuple[jax.Array, tuple[Metrics, PyTree]]:
    """Pure, jit-able: (loss, (metrics, new_model_state))."""

  def after_update(self, params: PyTree, model_state: PyTree, step: jax.Array) -> PyTree:
    """Runs after the optimizer update inside the step (e.g. momentum encoders)."""
    del params, step
    return model_state

  @abc.abstractmethod
  def make_example(self, position: int, rng: np.random.Generator) -> dict:
    """One training example (dict of numpy arrays), a pure function of its arguments."""

  def train_batches(self, start_step: int, local_batch_size: int, process_index: int,
                    process_count: int) -> Iterator[dict]:
    """Host-local batches for steps start_step, start_step + 1, ..."""
    return input_pipeline.step_batches(
        self.make_example, seed=self.config.seed, local_batch_size=local_batch_size,
        process_index=process_index, process_count=process_count, start_step=start_step,
        num_steps=self.config.num_steps, workers=self.config.data_workers,
        prefetch=self.config.prefetch)

  def predict_fn(self, params: PyTree, model_state: PyTree, batch: dict) -> PyTree:
    """Pure, jit-able inference outputs for a batch; every output leaf leads with the
    batch axis (evaluation splits batches over the devices)."""
    raise NotImplementedError(f"{type(self).__name__} has no predict_fn")

  def evaluators(self, workdir: str) -> list[Evaluator]:
    del workdir
    return []
