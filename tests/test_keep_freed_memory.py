"""runtime.keep_freed_memory: freed blocks stay mapped for reuse and CPU calls run one
after another, unless switched off.

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
import numpy as np
from neuroseg_jax import runtime
applied = runtime.keep_freed_memory()
block = np.ones({BLOCK}, np.uint8)  # every page touched
del block
import jax
with open("/proc/self/statm") as f:
  print(applied, int(f.read().split()[1]) * 4096, jax.config.read("jax_cpu_enable_async_dispatch"))
"""

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="glibc's mallopt")


def _applied_resident_async(setting: str) -> tuple[bool, int, bool]:
  env = {**os.environ, "PYTHONPATH": REPO, runtime.MEMORY_ENV: setting}
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  return out[0] == "True", int(out[1]), out[2] == "True"


def test_policy_keeps_freed_blocks_and_runs_calls_in_order():
  applied, kept, dispatch_ahead = _applied_resident_async("on")
  if not applied:
    pytest.skip("the C library has no glibc mallopt")
  switched_off, returned, default_dispatch_ahead = _applied_resident_async("off")
  assert not switched_off
  assert not dispatch_ahead and default_dispatch_ahead
  # With the policy the freed 64 MiB stay in the heap; glibc's default unmaps them.
  assert kept - returned > BLOCK * 3 // 4, (kept, returned)
