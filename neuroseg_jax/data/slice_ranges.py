"""Lists of z-slices written as text, like "0-14" or "0-4+10-12" (configs, commands)."""

from __future__ import annotations

import numpy as np

from neuroseg_jax.errors import ConfigError


def parse_slices(text: str, depth: int, field: str) -> list[int]:
  """"0-14" / "3" / "0-4+10-12" -> sorted z indices, each inside [0, depth); a ConfigError
  naming `field` otherwise."""
  indices = set()
  try:
    for part in str(text).split("+"):
      first, _, last = part.partition("-")
      indices.update(range(int(first), int(last or first) + 1))
  except ValueError:
    raise ConfigError(f"{field}: expected slices written like 0-14 or 0-4+10-12, got {text!r}"
                      ) from None
  if not indices or min(indices) < 0 or max(indices) >= depth:
    raise ConfigError(f"{field}: slices {text!r} are not inside the volume's {depth} slices")
  return sorted(indices)


def slices_text(indices) -> str:
  """Sorted z indices -> the "0-4+10-12" form `parse_slices` reads."""
  runs = []
  for z in sorted(indices):
    if runs and z == runs[-1][1] + 1:
      runs[-1][1] = z
    else:
      runs.append([z, z])
  return "+".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def fold_splits(indices, folds: int) -> list[tuple[list[int], list[int]]]:
  """`folds` contiguous folds of sorted z `indices`: (the fold's slices, all the others)
  for each, as out-of-fold tuning trains on the others and predicts the fold."""
  indices = sorted(indices)
  parts = np.array_split(np.asarray(indices), folds)
  return [(part.tolist(), sorted(set(indices) - set(part.tolist()))) for part in parts]
