"""Random model variables filled in NumPy from `jax.eval_shape`, with no init compile.

Jit-compiling a network's `init` on CPU costs seconds (a small UNETR) to tens of
seconds (NeuroSeg-III), almost all of it in the random-number kernels of the
per-parameter initializers; tests that need some valid weights, not flax's, use these.
"""

from typing import Any, Callable

import jax
import numpy as np


def fan_in_variables(init: Callable[[], Any], seed: int = 0) -> Any:
  """Variables with the shapes of `init()`: weights normal / sqrt(fan-in), scales and
  variances 1, biases and means 0 (so BatchNorm layers normalise sensibly)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "scale" in name or "var" in name:
      return np.ones(leaf.shape, leaf.dtype)
    if "bias" in name or "mean" in name:
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = max(1, int(np.prod(leaf.shape[:-1])))
    return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(init))


def normal_variables(init: Callable[[], Any], seed: int = 0, std: float = 0.3) -> Any:
  """Variables with the shapes of `init()`, every value normal(0, std)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (std * rng.normal(size=s.shape)).astype(s.dtype),
                      jax.eval_shape(init))
