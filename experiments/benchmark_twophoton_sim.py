"""Speed of the two-photon simulator (`data/twophoton_sim.py`) on this machine.

Simulates --repeats recordings of --frames frames of --size x --size pixels (by
default the simulator's own defaults, 64 frames of 128 x 128) with seeds 1, 2, ...,
after one untimed recording (seed 0) that warms up NumPy / SciPy, and prints the
best and median wall time per recording and frames/s. A wall-clock figure depends on
the machine's load, so it is printed here rather than asserted in a test; the
simulator is meant to take well under 1 s per default recording.

  python experiments/benchmark_twophoton_sim.py
  python experiments/benchmark_twophoton_sim.py --size 487 --frames 200 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from neuroseg_jax.data.twophoton_sim import SimulationConfig, simulate_recording


def recording_seconds(config: SimulationConfig, repeats: int) -> list[float]:
  """Wall seconds of `repeats` recordings (seeds 1..repeats) after one untimed recording."""
  simulate_recording(config, seed=0)
  times = []
  for seed in range(1, repeats + 1):
    start = time.perf_counter()
    simulate_recording(config, seed=seed)
    times.append(time.perf_counter() - start)
  return times


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=SimulationConfig.height)
  parser.add_argument("--frames", type=int, default=SimulationConfig.frames)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  config = SimulationConfig(height=args.size, width=args.size, frames=args.frames)
  times = recording_seconds(config, args.repeats)
  best, median = min(times), float(np.median(times))
  print(f"{args.frames} frames of {args.size}x{args.size}, {args.repeats} recordings: "
        f"best {best:.3f} s, median {median:.3f} s per recording "
        f"({args.frames / median:.0f} frames/s at the median)")


if __name__ == "__main__":
  main()
