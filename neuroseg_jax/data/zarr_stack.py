"""Zarr arrays as stacks [N, H, W] (`stack_base.Stack`): chunked volumes as connectomics
tools write them, sliced by zarr without reading the rest of the store.

Imported by `stacks.open_stack` only when a zarr store is opened (importing zarr
takes about 0.4 s). Works with zarr 3 (and zarr 2's group API).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from neuroseg_jax.data.stack_base import Stack, check_stack
from neuroseg_jax.errors import DataError


def _zarr_arrays(group) -> list[str]:
  """Paths of all arrays under a zarr group, sorted."""
  if hasattr(group, "members"):  # zarr 3
    return sorted(name for name, node in group.members(max_depth=None)
                  if isinstance(node, zarr.Array))
  found = []  # zarr 2
  group.visititems(lambda name, node: found.append(name) if isinstance(node, zarr.Array) else None)
  return sorted(found)


class ZarrStack(Stack):
  """A 3-D array of a zarr store (a `.zarr` directory), opened read-only; `key` (the
  array's path in the store, e.g. "volumes/raw") may be omitted when the store holds
  one array or is an array itself. `source` is "store:key"."""

  def __init__(self, path, key: str | None = None):
    path = Path(path)
    if not path.exists():
      raise DataError(path, "file not found")
    try:
      root = zarr.open(store=str(path), mode="r")
    except Exception as e:  # zarr raises its own types for folders without zarr metadata.
      raise DataError(path, f"not a readable zarr store ({e})") from e
    if isinstance(root, zarr.Array):
      if key:
        raise DataError(path, f"no array {key!r}: the store is a single array")
      self._data, self._parent, self.source = root, None, str(path)
    else:
      arrays = _zarr_arrays(root)
      found = ", ".join(arrays) or "nothing"
      if not key and len(arrays) != 1:
        raise DataError(path, f"give an array key (found: {found})")
      key = (key or arrays[0]).strip("/")
      if key not in arrays:
        raise DataError(path, f"no array {key!r} (found: {found})")
      parent = key.rpartition("/")[0]
      self._data, self._parent = root[key], root[parent] if parent else root
      self.source = f"{path}:{key}"
    self.shape = tuple(self._data.shape)
    self.dtype = check_stack(self.source, self.shape, self._data.dtype)

  def read(self, start, stop, rows=slice(None), cols=slice(None)):
    try:
      return np.asarray(self._data[start:stop, rows, cols])
    except Exception as e:  # a damaged chunk or codec error; zarr raises many types.
      raise DataError(self.source, f"cannot read items {start}..{stop - 1} ({e})") from e

  def attributes(self) -> list[dict]:
    return [dict(node.attrs) for node in (self._data, self._parent) if node is not None]
