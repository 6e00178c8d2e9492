"""Summary-image throughput: chunked JAX vs a straightforward NumPy implementation.

Simulates a two-photon movie (default 487x487, 1000 frames; to keep the exact
Poisson shot-noise draw short, --sim-frames distinct frames are simulated and
repeated in time, which does not change the work either implementation does),
then times, in the same run and on the same data:
  * JAX: `compute_summary_images` (mean, max, std, robust max and correlation
    image in one streamed pass, chunks of --chunk-size frames; compile excluded,
    host->device copies included) and `windowed_max_projections`;
  * NumPy: the whole movie in memory, each summary with whole-array NumPy calls
    (correlation image = mean over the 8 neighbours of the mean product of
    z-scored traces).
Prints frames/s for each and the JAX / NumPy ratio, the working memory of both
(NumPy: peak of its allocations, from tracemalloc, in one extra untimed run;
JAX: the chunk read from disk, its staging copy and the [H, W] accumulators),
and the largest difference between the two results as a sanity check.

  python experiments/benchmark_summary_images.py --frames 1000 --size 487
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import jax
import numpy as np

from neuroseg_jax.data.summary_images import compute_summary_images, windowed_max_projections
from neuroseg_jax.data.twophoton_sim import SimulationConfig, simulate_recording


def numpy_correlation_image(movie: np.ndarray) -> np.ndarray:
  """[T, H, W] -> [H, W]: mean Pearson correlation with the existing 8 neighbours."""
  std = movie.std(0)
  z = (movie - movie.mean(0)) / np.where(std > 0, std, np.inf)
  height, width = std.shape
  total, count = np.zeros((height, width), z.dtype), np.zeros((height, width), z.dtype)
  for dr in (-1, 0, 1):
    for dc in (-1, 0, 1):
      if dr or dc:
        rows = slice(max(-dr, 0), height - max(dr, 0))
        cols = slice(max(-dc, 0), width - max(dc, 0))
        neighbour = z[:, max(dr, 0):height + min(dr, 0), max(dc, 0):width + min(dc, 0)]
        total[rows, cols] += (z[:, rows, cols] * neighbour).mean(0)
        count[rows, cols] += 1
  return total / count


def numpy_summaries(movie: np.ndarray, window: int) -> dict:
  whole = len(movie) // window * window
  return {
      "mean": lambda: movie.mean(0),
      "max": lambda: movie.max(0),
      "std": lambda: movie.std(0),
      "robust_max": lambda: movie[:whole].reshape(-1, window, *movie.shape[1:]).mean(1).max(0),
      "corr": lambda: numpy_correlation_image(movie),
  }


def seconds(fn, repeats: int) -> tuple[float, object]:
  """Best wall time of `repeats` calls, and the last result."""
  best, result = np.inf, None
  for _ in range(repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best, result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--frames", type=int, default=1000)
  parser.add_argument("--size", type=int, default=487)
  parser.add_argument("--sim-frames", type=int, default=100)
  parser.add_argument("--chunk-size", type=int, default=50)
  parser.add_argument("--window", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()

  start = time.perf_counter()
  config = SimulationConfig(height=args.size, width=args.size,
                            frames=min(args.sim_frames, args.frames))
  simulated = simulate_recording(config, seed=0).movie
  movie = np.concatenate([simulated] * -(-args.frames // len(simulated)))[:args.frames]
  print(f"simulated {simulated.shape} in {time.perf_counter() - start:.1f} s, repeated to "
        f"{movie.shape}; JAX platform: {jax.devices()[0].platform}")

  warm = movie[:2 * args.chunk_size]  # compiles the per-chunk step for this chunk shape.
  compute_summary_images(warm, args.chunk_size, args.window)
  windowed_max_projections(warm, args.window, args.chunk_size)
  jax_all, jax_images = seconds(
      lambda: compute_summary_images(movie, args.chunk_size, args.window), args.repeats)
  jax_windows, _ = seconds(
      lambda: windowed_max_projections(movie, args.window, args.chunk_size), args.repeats)

  rows = {"JAX all five, one pass": jax_all, "JAX windowed max projections": jax_windows}
  worst = {}
  for name, fn in numpy_summaries(movie, args.window).items():
    rows[f"NumPy {name}"], image = seconds(fn, args.repeats)
    worst[name] = float(np.max(np.abs(image - jax_images[name])))
  numpy_total = sum(t for name, t in rows.items() if name.startswith("NumPy"))
  rows["NumPy all five"] = numpy_total

  print(f"\n{'implementation':34s} {'seconds':>8s} {'frames/s':>10s}")
  for name, elapsed in rows.items():
    print(f"{name:34s} {elapsed:8.2f} {len(movie) / elapsed:10.1f}")
  print(f"\nspeed-up JAX (all five) vs NumPy correlation image alone: "
        f"{rows['NumPy corr'] / jax_all:.2f}x")
  print(f"speed-up JAX (all five) vs NumPy all five:                {numpy_total / jax_all:.2f}x")
  tracemalloc.start()
  numpy_correlation_image(movie)
  numpy_peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  frame_bytes = movie[0].nbytes
  jax_bytes = 2 * args.chunk_size * frame_bytes + 10 * frame_bytes
  print(f"working memory beyond the movie: NumPy correlation image {numpy_peak / 2**20:.0f} MiB "
        f"(grows with T), JAX {jax_bytes / 2**20:.0f} MiB (fixed by --chunk-size)")
  print("max |JAX - NumPy|: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))


if __name__ == "__main__":
  main()
