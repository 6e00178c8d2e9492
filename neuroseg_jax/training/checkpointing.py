"""Checkpoints of the training state, the one place that talks to Orbax.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and
renames it when complete), so a run killed at any moment leaves the previous
complete checkpoint intact. Restores take an abstract state whose leaves carry
the *current* shardings, so a checkpoint written on 8 devices restores on 1 and
vice versa.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the last `keep` checkpoints of a state pytree under `directory`."""

  def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=asynchronous))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores `step` (default latest) into the shapes and shardings of `abstract_state`.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with `.sharding` set
    (e.g. from `jax.eval_shape` plus the run's shardings).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    logging.info("restoring checkpoint %s/%d", self.directory, step)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def read_numpy(self, step: int | None = None) -> Any:
    """The whole saved state as host numpy arrays, without knowing its structure.

    For transfer between models (pre-training -> fine-tuning), where the
    current run's state has another shape.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to read")
    self.wait()
    path = os.path.join(self.directory, str(step), "default")
    reader = ocp.PyTreeCheckpointer()
    tree = reader.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return reader.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_with_shardings(shapes: Any, shardings: Any) -> Any:
  """Pairs `jax.eval_shape` output with shardings into restorable ShapeDtypeStructs."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)
