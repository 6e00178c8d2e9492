"""Time to the first training step in a new process, with and without the compilation cache.

Runs `python -m neuroseg_jax.main --config=CONFIG,num_steps=1` three times, each in
a fresh process and a fresh run folder:
  off   - persistent cache disabled (what every process paid before);
  cold  - an empty cache folder (compiles and fills it);
  warm  - the same folder again (a resumed run, the next seed, a new study point).
Prints, per case, the wall time from process start to the first logged step, the
whole process's wall and CPU time, and warm/off ratios measured in this one run.

  python -m experiments.benchmark_first_step
  python -m experiments.benchmark_first_step --config configs/neuroseg3_seg.py:scale=s,image_size=512,height=512,width=512,num_recordings=2,frames=40,num_val=1,batch_size=8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_seconds_of_children() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def time_first_step(config: str, workdir: str, cache: str) -> dict:
  """Runs one training step in a new process; returns its timings in seconds."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}
  env["NEUROSEG_JAX_CACHE_DIR"] = cache
  cpu_before = _cpu_seconds_of_children()
  start = time.time()
  subprocess.run([sys.executable, "-m", "neuroseg_jax.main", f"--config={config},num_steps=1",
                  f"--workdir={workdir}"], env=env, check=True, cwd=REPO,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wall = time.time() - start
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    first = next(json.loads(line) for line in f if "train/loss" in line)
  return {"to_first_step_s": round(first["wall_time"] - start, 1), "process_wall_s": round(wall, 1),
          "process_cpu_s": round(_cpu_seconds_of_children() - cpu_before, 1)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/neuroseg3_seg.py:smoke")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as scratch:
    cache = os.path.join(scratch, "cache")
    results = {name: time_first_step(args.config, os.path.join(scratch, name), folder)
               for name, folder in (("off", "off"), ("cold", cache), ("warm", cache))}
  print(f"config {args.config}")
  print(f"{'cache':>6} {'to first step s':>16} {'process wall s':>15} {'process CPU s':>14}")
  for name, r in results.items():
    print(f"{name:>6} {r['to_first_step_s']:>16} {r['process_wall_s']:>15} {r['process_cpu_s']:>14}")
  ratio = results["off"]["to_first_step_s"] / max(results["warm"]["to_first_step_s"], 1e-9)
  print(f"time to first step, cache off / warm cache: {ratio:.2f}x")
  return results


if __name__ == "__main__":
  main()
