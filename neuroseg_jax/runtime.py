"""Process-wide settings that entry points apply before the first computation.

The persistent compilation cache: the training step of a NeuroSeg-III or ViT
model takes 1-3 minutes to compile on a 2-core CPU, and every new process (a
resumed run, the next seed, `segment` after `train`) would compile it again.
With the cache, XLA executables are stored on disk keyed by the program, so a
second process with the same model and shapes loads them instead.

Where: `$NEUROSEG_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/neuroseg_jax/xla`, else
`~/.cache/neuroseg_jax/xla`; `NEUROSEG_JAX_CACHE_DIR=off` disables it. A cache
folder the user set through JAX's own `JAX_COMPILATION_CACHE_DIR` is kept.

Freed memory is kept for reuse (`keep_freed_memory`): XLA:CPU allocates the
temporary buffer of every call afresh, and glibc's malloc serves blocks above its
mmap threshold (at most 32 MiB) with a new mapping that it unmaps on free, so each
call page-faults and zeroes its whole temporary buffer again: gigabytes per
NeuroSeg-III training step (1.14x the images/s with them kept), 35 MB per 50 frames
in the summary-image kernel (0.17-0.27 against 0.16 CPU-ms a frame kept, on the idle
2-core CPU; 0.5 against 0.16 on one core of a busy one). Training also runs its
calls one after another (`keep_freed_memory(calls_in_order=True)`: JAX's asynchronous
dispatch on CPU off): dispatched ahead, a step allocates its buffers while the
previous step still holds its own, so the kept memory would hold two or more copies
of the largest buffer. The commands that do not train (`segment`, whose throughput
issue 13 measured this way) dispatch ahead as before.
`NEUROSEG_JAX_KEEP_FREED_MEMORY=off` leaves malloc and dispatch as they are (freed
memory then goes back to the system, at the speed cost above).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

import jax

CACHE_ENV = "NEUROSEG_JAX_CACHE_DIR"
MEMORY_ENV = "NEUROSEG_JAX_KEEP_FREED_MEMORY"
# glibc's mallopt parameters (malloc.h): one arena for every thread, no mmap for large
# blocks, never give the top of the heap back (-1 reads as SIZE_MAX).
_MALLOPT_SETTINGS = ((-8, 1), (-4, 0), (-1, -1))  # M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD
_OFF = ("", "off", "none", "0")
# Programs that compile faster than this are not worth a disk entry.
MIN_COMPILE_SECONDS = 0.5


def default_cache_dir() -> str | None:
  """The cache folder from the environment (see the module docstring); None = off."""
  chosen = os.environ.get(CACHE_ENV)
  if chosen is not None:
    return None if chosen.lower() in _OFF else chosen
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


def keep_freed_memory(calls_in_order: bool = False) -> bool:
  """Makes glibc's malloc reuse freed memory in place (see the module docstring): later
  calls find their buffers mapped already. With `calls_in_order` JAX also runs CPU
  calls one after another, so that each call finds the memory the previous one freed
  (for training: a NeuroSeg-III step at 512 px, batch 8, in 4 micro-batch calls then
  peaks at 2.29 GiB, against 2.36 GiB with glibc's defaults and 5.5-5.9 GiB kept but
  dispatched ahead, and runs 1.2x faster than with glibc's defaults). The process
  keeps its high-water mark until it exits. Applies only on Linux with glibc and
  before JAX starts its threads and its CPU client (entry points call it first);
  returns whether it applied."""
  if os.environ.get(MEMORY_ENV, "on").lower() in _OFF or platform.system() != "Linux":
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt  # the process's C library
  except (OSError, AttributeError):
    return False
  if not all(mallopt(option, value) == 1 for option, value in _MALLOPT_SETTINGS):
    return False
  if calls_in_order:
    jax.config.update("jax_cpu_enable_async_dispatch", False)
  return True


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
