"""Per-frame cost of each part of `segment`'s movie reads, timed one at a time.

Writes a --frames x 487 x 487 uint16 TIFF (the generator of benchmark_segment.py)
into --folder and prints, per part, wall and CPU milliseconds per frame: the TIFF
read, motion estimation, whole-pixel and bilinear shifts, the summary-image
accumulation, writing frames side by side for the traces, the sparse trace
product, and the two reads as `segment` runs them.

  python -m experiments.benchmark_segment_parts --frames 1500 --folder W
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tifffile

from experiments import benchmark_segment
from neuroseg_jax.data import motion
from neuroseg_jax.data import movie_passes
from neuroseg_jax.data import summary_images
from neuroseg_jax.data import traces
from neuroseg_jax.data.movies import open_movie

CHUNK = 48  # frames per timed call (a multiple of TRACE_CHUNK)
TRACE_CHUNK = traces.DEFAULT_CHUNK_SIZE




def timed(name: str, frames: int, fn):
  wall, cpu = time.perf_counter(), time.process_time()
  result = fn()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  print(f"  {name:40s} {1e3 * wall / frames:7.3f} {1e3 * cpu / frames:7.3f}", flush=True)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--frames", type=int, default=1500)
  parser.add_argument("--folder", type=Path, required=True)
  parser.add_argument("--keep", action="store_true", help="keep the generated TIFF")
  args = parser.parse_args()
  size, count = 487, args.frames
  args.folder.mkdir(parents=True, exist_ok=True)
  path = args.folder / f"parts_{count}.tif"
  masks = benchmark_segment.soma_masks(size, 300, np.random.default_rng(0))
  tifffile.imwrite(path, benchmark_segment.frames(size, count, masks, seed=1),
                   shape=(count, size, size), dtype=np.uint16, photometric="minisblack")
  movie = open_movie(path)
  chunks = range(0, count, CHUNK)

  def repeat(fn):
    """fn(start) for every chunk, keeping no result (so T frames are never allocated)."""
    def run():
      for start in chunks:
        fn(start)
    return run
  summary_images.compute_summary_images(movie[:100])  # compile outside the timings
  for start in chunks:  # the first read parses the TIFF's page index: keep it out too
    movie[start:start + CHUNK]
  print(f"{count} frames of {size} x {size}; ms per frame: wall, CPU")
  native = movie.read_native(0, CHUNK)
  buffer = np.empty((CHUNK, size, size), np.float32)
  timed("TIFF read, cast to float32", count,
        repeat(lambda s: movie.read_into(s, min(s + CHUNK, count), buffer[:min(CHUNK, count - s)])))
  shifts = timed("motion estimation (read included)", count,
                 lambda: motion.estimate_shifts(movie))
  timed("whole-pixel shift + cast", count,
        repeat(lambda s: motion.shift_frames(native, np.round(shifts[:CHUNK]), buffer)))
  timed("bilinear shift + cast", count,
        repeat(lambda s: motion.shift_frames(native, shifts[:CHUNK] + 0.3, buffer)))
  timed("summary images of the raw movie", count,
        lambda: summary_images.compute_summary_images(movie))
  side_by_side = np.empty((size, size, TRACE_CHUNK), np.float32)
  timed(f"{TRACE_CHUNK} frames side by side (shift + cast)", count,
        repeat(lambda s: [motion.shift_frames(native[i:i + TRACE_CHUNK],
                                              np.round(shifts[i:i + TRACE_CHUNK]),
                                              side_by_side.transpose(2, 0, 1))
                          for i in range(0, CHUNK - TRACE_CHUNK + 1, TRACE_CHUNK)]))
  operator = traces._mean_operator(np.concatenate([masks, traces.neuropil_masks(masks)]))  # pylint: disable=protected-access
  timed(f"sparse trace product ({operator.nnz} nonzeros)", count,
        repeat(lambda s: [operator @ side_by_side.reshape(-1, TRACE_CHUNK)
                          for _ in range(CHUNK // TRACE_CHUNK)]))
  _, corrected = timed("read 1: motion + summary images", count,
                       lambda: movie_passes.summarize(movie))
  timed("read 2: traces", count, lambda: traces.extract_traces(corrected, masks))
  if not args.keep:
    path.unlink()


if __name__ == "__main__":
  main()
