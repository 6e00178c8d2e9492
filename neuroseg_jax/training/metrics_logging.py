"""Where training numbers go: metrics.jsonl, TensorBoard events, the terminal.

Only process 0 writes. `metrics.jsonl` holds one JSON object per line with at
least "step" and "wall_time"; train lines add loss terms, learning rate and
throughput, evaluator lines add their "val/..." results.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Mapping

import jax
import numpy as np


def _to_python(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def drop_records_after(path: str, step: int) -> None:
  """Keeps the records of `path` up to `step`, so a resumed run does not repeat rows.

  A run killed after its last checkpoint logged steps that the resumed run
  logs again; a kill in the middle of a write leaves a partial last line. Both
  are dropped (the file is rewritten atomically).
  """
  if not os.path.exists(path):
    return
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        dropped += 1
        continue
      if record.get("step", 0) <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    logging.info("%s: dropped %d records after step %d (the run resumes there)", path,
                 dropped, step)
    with open(path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)


class MetricWriter:
  """Appends metric records to DIR/metrics.jsonl and DIR/tensorboard; shows progress."""

  def __init__(self, workdir: str, total_steps: int, start_step: int = 0,
               interactive: bool | None = None):
    self.is_writer = jax.process_index() == 0
    self.total_steps = total_steps
    self._start_time = time.time()
    self._start_step = start_step
    self._jsonl = None
    self._tensorboard = None
    self._bar = None
    if not self.is_writer:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    drop_records_after(path, start_step)
    self._jsonl = open(path, "a", buffering=1)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
    interactive = sys.stderr.isatty() if interactive is None else interactive
    if interactive:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

  def write(self, step: int, metrics: Mapping[str, float]) -> dict:
    """Records `metrics` for `step`; returns the record written."""
    record = {"step": int(step), "wall_time": time.time()}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    if not self.is_writer:
      return record
    self._jsonl.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key not in ("step", "wall_time") and isinstance(value, (int, float)):
        self._tensorboard.add_scalar(key, value, step)
    self._show(step, record)
    return record

  def advance(self, step: int) -> None:
    """Moves the progress bar (interactive terminals only) to `step`."""
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def _show(self, step: int, record: dict) -> None:
    shown = {k: v for k, v in record.items()
             if isinstance(v, (int, float)) and k not in ("step", "wall_time")}
    text = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
    if self._bar is not None:
      self._bar.set_postfix_str(text[:120], refresh=False)
      self.advance(step)
      return
    elapsed = time.time() - self._start_time
    done = step - self._start_step
    eta = elapsed / done * (self.total_steps - step) if done > 0 else math.nan
    logging.info("step %d/%d (eta %.0fs) %s", step, self.total_steps, eta, text)

  def close(self) -> None:
    if not self.is_writer:
      return
    if self._bar is not None:
      self._bar.close()
    self._tensorboard.close()
    self._jsonl.close()
