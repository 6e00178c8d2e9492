"""Checkpoints of the training state, the one place that talks to Orbax.

Orbax writes each checkpoint to a temporary folder and renames it when complete,
so a kill never leaves a half-written `STEP/` folder. What a kill can lose:
* synchronous saves (the default): `save` returns once the checkpoint is
  committed, so a run killed at any moment resumes from a step at most
  `checkpoint_every` steps behind the last finished step;
* asynchronous saves (`checkpoint_async=True`, for large states on accelerators):
  the newest save may still be in flight, so up to 2 x `checkpoint_every` steps.

A checkpoint damaged after it was committed (truncated array files, corrupt
metadata: a full disk, a copy cut short) is reported in one line naming its
step and the problem, moved aside to `damaged-STEP/`, and the newest intact
checkpoint before it is restored instead.

Restores take an abstract state whose leaves carry the *current* shardings, so a
checkpoint written on 8 devices restores on 1 and vice versa.

Orbax's replica-parallel saving (each replica of a replicated array writes a slice)
only pays across processes. In one process it compiles a slice per array shape and
device on the first save (about 300 small compiles, 17 s, for a NeuroSeg-III state on
8 CPU devices), so `Checkpointer` turns it on only when there are several processes.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the last `keep` checkpoints of a state pytree under `directory`."""

  def __init__(self, directory: str, keep: int = 3, asynchronous: bool = False):
    _register_array_handler()
    self.directory = os.path.abspath(directory)
    self._keep = keep
    self._asynchronous = asynchronous
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self._keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=self._asynchronous))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Saves `state` as `step`; synchronous checkpointers return once it is committed."""
    self._manager.save(step, args=ocp.args.StandardSave(state))
    if not self._asynchronous:
      self._manager.wait_until_finished()

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

  def restore_latest_intact(self, abstract_state: Any) -> tuple[int, Any] | None:
    """(step, state) of the newest checkpoint that restores; None when there is none.

    Each damaged checkpoint met on the way is logged in one line and moved to
    `damaged-STEP/` beside the others, so later saves can reuse its step.
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        with _quiet_failed_reads():
          return step, self.restore(abstract_state, step)
      except Exception as e:  # pylint: disable=broad-except  # TensorStore, JSON, OS errors
        problem = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        aside = os.path.join(self.directory, f"damaged-{step}-{int(time.time())}")
        logging.warning("checkpoint step %d in %s is damaged (%s: %s); moved to %s, "
                        "trying the one before", step, self.directory, type(e).__name__,
                        problem, os.path.basename(aside))
        self._manager.close()
        if jax.process_index() == 0:  # one process moves it; all skip it
          os.replace(os.path.join(self.directory, str(step)), aside)
        self._manager = self._open()
    return None

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


@functools.cache
def _register_array_handler() -> None:
  """Orbax's handler for jax.Array, replica-parallel only across processes (see top).

  Once per process; Orbax's warning that a handler is overridden is not shown.
  """
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=jax.process_count() > 1),
        override=True)
  finally:
    absl_logger.setLevel(level)


@contextlib.contextmanager
def _quiet_failed_reads():
  """Silences asyncio's reports of the parallel array reads a damaged checkpoint fails.

  One read fails the restore; the other reads' failures would otherwise be
  logged as screens of TensorStore specs when their futures are collected.
  """
  logger = logging.getLogger("asyncio")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    gc.collect()
    logger.setLevel(level)


def abstract_with_shardings(shapes: Any, shardings: Any) -> Any:
  """Pairs `jax.eval_shape` output with shardings into restorable ShapeDtypeStructs."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)
