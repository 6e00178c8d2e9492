"""Process-wide JAX settings that entry points apply before the first computation.

The persistent compilation cache: the training step of a NeuroSeg-III or ViT
model takes 1-3 minutes to compile on a 2-core CPU, and every new process (a
resumed run, the next seed, `segment` after `train`) would compile it again.
With the cache, XLA executables are stored on disk keyed by the program, so a
second process with the same model and shapes loads them instead.

Where: `$NEUROSEG_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/neuroseg_jax/xla`, else
`~/.cache/neuroseg_jax/xla`; `NEUROSEG_JAX_CACHE_DIR=off` disables it. A cache
folder the user set through JAX's own `JAX_COMPILATION_CACHE_DIR` is kept.
"""

from __future__ import annotations

import logging
import os
import platform

import jax

CACHE_ENV = "NEUROSEG_JAX_CACHE_DIR"
# Programs that compile faster than this are not worth a disk entry.
MIN_COMPILE_SECONDS = 0.5


def default_cache_dir() -> str | None:
  """The cache folder from the environment (see the module docstring); None = off."""
  chosen = os.environ.get(CACHE_ENV)
  if chosen is not None:
    return None if chosen.lower() in ("", "off", "none", "0") else chosen
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "neuroseg_jax", "xla")


def enable_compilation_cache(directory: str | None = None,
                             min_compile_seconds: float = MIN_COMPILE_SECONDS) -> str | None:
  """Turns on JAX's persistent compilation cache; returns the folder (None: off)."""
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  directory = directory or default_cache_dir()
  if directory is None:
    return None
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    logging.warning("compilation cache off: cannot create %s (%s)", directory, e.strerror)
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
  return directory


def hardware_description() -> str:
  """CPU model and core count, JAX version and devices, in words (for result tables)."""
  cpu = platform.processor() or platform.machine()
  if os.path.isfile("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = models[0] if models else cpu
  devices = jax.devices()
  return (f"{cpu}, {os.cpu_count()} CPU cores, jax {jax.__version__} on {len(devices)} x "
          f"{devices[0].device_kind}")
