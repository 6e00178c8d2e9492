"""runtime.keep_freed_memory: freed blocks stay mapped for reuse, and with
calls_in_order CPU calls run one after another, unless switched off.

Each case runs in a fresh process (the policy is process-wide and must be set
before other threads allocate): it allocates and frees a 64 MiB block (glibc maps
a block that large on its own and unmaps it on free) and reports its resident
memory afterwards.
"""

import os
import platform
import subprocess
import sys

import pytest

from neuroseg_jax import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 64 << 20
SCRIPT = f"""
import jax
import numpy as np
from neuroseg_jax import runtime
runtime.keep_freed_memory()
ahead_without_order = jax.config.read("jax_cpu_enable_async_dispatch")
applied = runtime.keep_freed_memory(calls_in_order=True)
block = np.ones({BLOCK}, np.uint8)  # every page touched
del block
with open("/proc/self/statm") as f:
  print(applied, int(f.read().split()[1]) * 4096, ahead_without_order,
        jax.config.read("jax_cpu_enable_async_dispatch"))
"""

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="glibc's mallopt")


def _applied_resident_dispatch(setting: str) -> tuple[bool, int, bool, bool]:
  """(applied, resident bytes, dispatch ahead after keep_freed_memory(), and after
  keep_freed_memory(calls_in_order=True))."""
  env = {**os.environ, "PYTHONPATH": REPO, runtime.MEMORY_ENV: setting}
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  return out[0] == "True", int(out[1]), out[2] == "True", out[3] == "True"


def test_policy_keeps_freed_blocks_and_runs_calls_in_order():
  applied, kept, ahead_by_default, ahead_in_order = _applied_resident_dispatch("on")
  if not applied:
    pytest.skip("the C library has no glibc mallopt")
  switched_off, returned, _, ahead_switched_off = _applied_resident_dispatch("off")
  assert not switched_off
  assert ahead_by_default and not ahead_in_order and ahead_switched_off
  # With the policy the freed 64 MiB stay in the heap; glibc's default unmaps them.
  assert kept - returned > BLOCK * 3 // 4, (kept, returned)
