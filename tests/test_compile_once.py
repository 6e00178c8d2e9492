"""Compile once: a new seed, or a new process, reuses the compiled training step.

The step's random key is an argument of the jitted step (not a captured
constant), so runs that differ in their seed lower to the same program; with the
persistent compilation cache (`neuroseg_jax.runtime`) the second run, in the same
process or in another one, compiles nothing. Counted with JAX's own monitoring
events: a persistent-cache miss is an XLA compilation.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, sys
import jax
from neuroseg_jax import runtime, tasks
from neuroseg_jax.training import loop
from tests import toy_task
runtime.enable_compilation_cache(sys.argv[1], min_compile_seconds=0)
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
counts = []
for seed in map(int, sys.argv[3:]):
  before = len(events)
  loop.train(tasks.build(toy_task.toy_config(seed=seed, num_steps=2)),
             f"{sys.argv[2]}/seed{seed}", devices=jax.devices()[:1])
  new = events[before:]
  counts.append({"seed": seed, "misses": new.count("/jax/compilation_cache/cache_misses"),
                 "hits": new.count("/jax/compilation_cache/cache_hits")})
print(json.dumps(counts))
"""


def _run(cache, workdir, *seeds):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SCRIPT, str(cache), str(workdir),
                           *map(str, seeds)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_second_seed_and_second_process_do_not_compile(tmp_path):
  first, second = _run(tmp_path / "cache", tmp_path / "runs", 0, 1)
  assert first["misses"] > 0, "the first run compiles"
  assert second["misses"] == 0 and second["hits"] > 0, second
  (third,) = _run(tmp_path / "cache", tmp_path / "runs", 2)
  assert third["misses"] == 0 and third["hits"] >= second["hits"], third
