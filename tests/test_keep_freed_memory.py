"""runtime.keep_freed_memory: freed blocks stay mapped for reuse, unless switched off.

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
with open("/proc/self/statm") as f:
  print(applied, int(f.read().split()[1]) * 4096)
"""

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="glibc's mallopt")


def _applied_and_resident(setting: str) -> tuple[bool, int]:
  env = {**os.environ, "PYTHONPATH": REPO, runtime.MEMORY_ENV: setting}
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  return out[0] == "True", int(out[1])


def test_freed_block_stays_resident_only_with_the_policy():
  applied, kept = _applied_and_resident("on")
  if not applied:
    pytest.skip("the C library has no glibc mallopt")
  switched_off, returned = _applied_and_resident("off")
  assert not switched_off
  # With the policy the freed 64 MiB stay in the heap; glibc's default unmaps them.
  assert kept - returned > BLOCK * 3 // 4, (kept, returned)
