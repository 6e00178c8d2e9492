"""Atomic file writes: write under a temporary name, then rename into place.

The temporary file sits in the destination's folder (so `os.replace` is a rename
on one file system, which is atomic), is hidden (leading dot), carries the
process id (two writers of one file do not share it) and ends like the final
name (libraries that check the suffix, e.g. pynwb's ".nwb", stay quiet). A
writer that raises leaves no file behind and the previous file, if any,
untouched, so nothing half-written ever claims to be a result.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary Path next to `path` to write to (by any library); renames it
  to `path` if the block finishes, deletes it if the block raises."""
  path = Path(path)
  temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
  try:
    yield temporary
    os.replace(temporary, path)
  finally:
    temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
  """Yields a file open (in `mode`) on `atomic_path(path)`; it is closed before the
  rename."""
  with atomic_path(path) as temporary:
    with open(temporary, mode) as file:
      yield file
