"""Loading pre-trained weights into part of a new model, loudly.

A silent partial load is the classic transfer bug, so every transfer counts the
arrays it copies, logs the count, and fails with the list of differences when
the source and destination subtrees do not match exactly (same keys, same
shapes).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

from neuroseg_jax.training import checkpointing


class TransferError(ValueError):
  """Pre-trained and destination subtrees differ."""


def _get(tree: Any, path: str, what: str) -> Any:
  node = tree
  for name in path.split("/"):
    if not isinstance(node, dict) or name not in node:
      keys = sorted(node) if isinstance(node, dict) else type(node).__name__
      raise TransferError(f"{what}: no subtree {path!r} (stopped at {name!r}; has {keys})")
    node = node[name]
  return node


def _set(tree: dict, path: str, value: Any) -> dict:
  head, _, rest = path.partition("/")
  updated = dict(tree)
  updated[head] = value if not rest else _set(tree[head], rest, value)
  return updated


def _flat(tree: Any) -> dict[str, Any]:
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def copy_subtree(destination: dict, source: dict, dst_path: str, src_path: str,
                 source_name: str = "checkpoint") -> tuple[dict, int]:
  """Returns (destination with `dst_path` replaced by source's `src_path`, arrays copied).

  Paths are "/"-separated keys, e.g. "params/backbone". Raises TransferError
  listing missing, unexpected and mis-shaped arrays if the subtrees differ.
  """
  want = _flat(_get(destination, dst_path, "model"))
  have = _flat(_get(source, src_path, source_name))
  missing = sorted(set(want) - set(have))
  unexpected = sorted(set(have) - set(want))
  mis_shaped = sorted(f"{k}: model {np.shape(want[k])} vs {source_name} {np.shape(have[k])}"
                      for k in set(want) & set(have) if np.shape(want[k]) != np.shape(have[k]))
  if missing or unexpected or mis_shaped:
    lines = [f"cannot load {source_name}:{src_path} into model:{dst_path} "
             f"({len(want)} arrays in the model, {len(have)} in the checkpoint)"]
    for label, items in (("missing from checkpoint", missing),
                         ("not in model", unexpected), ("shape mismatch", mis_shaped)):
      if items:
        lines.append(f"  {label} ({len(items)}): " + "; ".join(items[:10])
                     + (" ..." if len(items) > 10 else ""))
    raise TransferError("\n".join(lines))
  src_tree = _get(source, src_path, source_name)
  dst_tree = _get(destination, dst_path, "model")
  copied = jax.tree.map(lambda d, s: np.asarray(s, dtype=np.asarray(d).dtype), dst_tree,
                        src_tree)
  return _set(destination, dst_path, copied), len(want)


def load_checkpoint_state(directory: str) -> dict:
  """Numpy state of the latest checkpoint in `directory` (a workdir or its checkpoints/)."""
  candidates = [os.path.join(directory, "checkpoints"), directory]
  for path in candidates:
    if os.path.isdir(path):
      checkpointer = checkpointing.Checkpointer(path)
      try:
        if checkpointer.latest_step() is not None:
          return checkpointer.read_numpy()
      finally:
        checkpointer.close()
  raise FileNotFoundError(f"{directory}: no pre-training checkpoint found")


def load_pretrained(variables: dict, directory: str,
                    mapping: list[tuple[str, str]]) -> tuple[dict, int]:
  """Copies each (dst_path, src_path) of `mapping` from the checkpoint in `directory`.

  `variables` is {"params": ..., "model_state": ...}-like (numpy). Returns the
  updated variables and the number of arrays loaded, which is logged.
  """
  source = load_checkpoint_state(directory)
  total = 0
  for dst_path, src_path in mapping:
    variables, count = copy_subtree(variables, source, dst_path, src_path,
                                    source_name=directory)
    logging.info("loaded %d pre-trained arrays %s:%s -> %s", count, directory, src_path,
                 dst_path)
    total += count
  return variables, total
