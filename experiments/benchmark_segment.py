"""Movie-to-traces throughput of the streamed stages, on an ABO-size TIFF on disk.

Writes a uint16 multipage TIFF of --frames frames of --size x --size pixels into
a temporary folder, frame by frame (never the whole movie in memory; free disk
space is checked first): a static background with --rois bright disc somata,
transients on a third of them, shot-like noise drawn from a bank of 32 noise
frames, and a random-walk integer motion of a few pixels. Then, in a fresh
subprocess per run (so each peak memory is its own), times the two streamed reads
the `segment` command makes (`data/movie_passes.py`):
  summary   motion estimated and corrected (whole pixels) as each chunk is read, and
            `compute_summary_images` of the corrected chunks;
  traces    `extract_traces` of the corrected movie for the --rois true masks.
and prints, per read and end to end, wall seconds, frames/s and CPU seconds. With
--before it also times, in the same process, the three reads of the previous
pipeline (estimate_shifts; summary images of a bilinear ShiftedMovie; traces of it)
and prints the end-to-end speed-up.
The run is repeated on the first half of the frames to show that memory does
not grow with T: peak RssAnon (the process's own memory, sampled every 20 ms)
and ru_maxrss, which also counts the pages of the memory-mapped TIFF that the
process has touched (page cache, reclaimable; it does grow with T).

  python -m experiments.benchmark_segment --frames 3000 --before
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tifffile

from neuroseg_jax.data import movie_passes
from neuroseg_jax.data.motion import ShiftedMovie, estimate_shifts
from neuroseg_jax.data.movies import Movie, open_movie
from neuroseg_jax.data.summary_images import compute_summary_images
from neuroseg_jax.data.traces import extract_traces

_NOISE_BANK = 32
_MAX_MOTION = 4  # pixels, per axis.


def soma_masks(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
  """[count, size, size] bool discs of radius 4-6 px that do not touch each other."""
  rows, cols = np.mgrid[:size, :size]
  masks, centres = [], []
  while len(masks) < count:
    radius = rng.uniform(4, 6)
    centre = rng.uniform(radius + _MAX_MOTION + 1, size - radius - _MAX_MOTION - 1, 2)
    if all(np.hypot(*(centre - c)) > radius + r + 2 for c, r in centres):
      centres.append((centre, radius))
      masks.append(np.hypot(rows - centre[0], cols - centre[1]) <= radius)
  return np.stack(masks)


def frames(size: int, count: int, masks: np.ndarray, seed: int):
  """Yields `count` uint16 frames [size, size] of the synthetic recording."""
  rng = np.random.default_rng(seed)
  base = 400.0 + 600.0 * masks.sum(0)
  noise = rng.normal(0, 30, (_NOISE_BANK, size, size)).astype(np.float32)
  active = np.flatnonzero(rng.random(len(masks)) < 1 / 3)
  pixels = [np.flatnonzero(masks[i]) for i in active]
  level, shift = np.zeros(len(active)), np.zeros(2, int)
  for _ in range(count):
    level = 0.9 * level + 800.0 * (rng.random(len(active)) < 0.02)  # spikes, 0.3 s decay.
    shift = np.clip(shift + rng.integers(-1, 2, 2), -_MAX_MOTION, _MAX_MOTION)
    frame = base.copy().reshape(-1)
    for amount, where in zip(level, pixels):
      frame[where] += amount
    frame = np.roll(frame.reshape(size, size), shift, axis=(0, 1))
    frame += noise[rng.integers(_NOISE_BANK)]
    yield np.clip(frame, 0, 65535).astype(np.uint16)


class FirstFrames(Movie):
  """The first `count` frames of a movie."""

  def __init__(self, movie: Movie, count: int):
    self._movie = movie
    self.source, self.dtype = movie.source, movie.dtype
    self.shape = (min(count, len(movie)), *movie.shape[1:])

  def read_native(self, start, stop):
    return self._movie.read_native(start, min(stop, len(self)))


class PeakAnonymousMemory:
  """Samples RssAnon of /proc/self/status in a thread; `peak` in bytes."""

  def __init__(self, interval: float = 0.02):
    self.peak, self._stop = 0, threading.Event()
    self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
    self._thread.start()

  def _sample(self, interval):
    while not self._stop.wait(interval):
      with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("RssAnon"))
      self.peak = max(self.peak, kib * 1024)

  def stop(self) -> int:
    self._stop.set()
    self._thread.join()
    return self.peak


def run_stages(movie_path: Path, masks_path: Path, count: int, chunk_size: int,
               before: bool) -> dict:
  """Times the reads on the first `count` frames; returns the measurements."""
  memory = PeakAnonymousMemory()
  masks = np.load(masks_path)
  movie = FirstFrames(open_movie(movie_path), count)
  compute_summary_images(movie[:100])  # compiles the JAX step outside the timings.
  timings = {}

  def timed(name, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    timings[name] = (time.perf_counter() - wall, time.process_time() - cpu)
    return result

  _, corrected = timed("summary", lambda: movie_passes.summarize(movie))
  timed("traces", lambda: extract_traces(corrected, masks, chunk_size=chunk_size))
  if before:
    shifts = timed("before: motion", lambda: estimate_shifts(movie, chunk_size=chunk_size))
    bilinear = ShiftedMovie(movie, shifts)
    timed("before: summary", lambda: compute_summary_images(bilinear))
    timed("before: traces", lambda: extract_traces(bilinear, masks, chunk_size=chunk_size))
  return {"frames": len(movie), "timings": timings, "peak_anon": memory.stop(),
          "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def print_run(run: dict) -> None:
  frames_done = run["frames"]
  print(f"\n{frames_done} frames")
  print(f"  {'read':16s} {'wall s':>8s} {'frames/s':>9s} {'CPU s':>8s}")
  totals = {}
  for name, (wall, cpu) in run["timings"].items():
    pipeline = "before" if name.startswith("before") else "now"
    total = totals.setdefault(pipeline, [0.0, 0.0])
    total[0], total[1] = total[0] + wall, total[1] + cpu
    print(f"  {name:16s} {wall:8.2f} {frames_done / wall:9.0f} {cpu:8.2f}")
  for pipeline, (wall, cpu) in totals.items():
    print(f"  {'end to end, ' + pipeline:16s} {wall:8.2f} {frames_done / wall:9.0f} {cpu:8.2f}")
  if "before" in totals:
    print(f"  speed-up (wall): {totals['before'][0] / totals['now'][0]:.2f}x")
  print(f"  peak RssAnon {run['peak_anon'] / 2**20:.0f} MiB, ru_maxrss "
        f"{run['maxrss'] / 2**20:.0f} MiB (includes touched pages of the mapped TIFF)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--frames", type=int, default=23000)
  parser.add_argument("--size", type=int, default=487)
  parser.add_argument("--rois", type=int, default=300)
  parser.add_argument("--chunk-size", type=int, default=50)
  parser.add_argument("--before", action="store_true",
                      help="also time the previous three-read pipeline (same process)")
  parser.add_argument("--folder", type=Path, default=None,
                      help="where to write the TIFF (default: a new temporary folder)")
  parser.add_argument("--run", nargs=3, metavar=("TIFF", "MASKS", "FRAMES"),
                      help=argparse.SUPPRESS)  # internal: one timed run, JSON on stdout.
  args = parser.parse_args()
  if args.run:
    print(json.dumps(run_stages(Path(args.run[0]), Path(args.run[1]), int(args.run[2]),
                                args.chunk_size, args.before)))
    return

  folder = Path(tempfile.mkdtemp(prefix="benchmark_segment_", dir=args.folder))
  try:
    needed = args.frames * args.size ** 2 * 2 * 1.05 + 2**26
    free = shutil.disk_usage(folder).free
    print(f"TIFF needs {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free in {folder}")
    if free < needed:
      sys.exit(f"not enough free disk space in {folder}: use --folder or fewer --frames")
    masks = soma_masks(args.size, args.rois, np.random.default_rng(0))
    np.save(folder / "masks.npy", masks)
    movie_path = folder / "movie.tif"
    start = time.perf_counter()
    tifffile.imwrite(movie_path, frames(args.size, args.frames, masks, seed=1),
                     shape=(args.frames, args.size, args.size), dtype=np.uint16,
                     bigtiff=True, photometric="minisblack")
    print(f"wrote {movie_path} ({args.frames} x {args.size} x {args.size} uint16) in "
          f"{time.perf_counter() - start:.0f} s")
    repository = Path(__file__).resolve().parents[1]
    for count in (args.frames // 2, args.frames):
      command = [sys.executable, "-m", "experiments.benchmark_segment", "--chunk-size",
                 str(args.chunk_size), "--run", str(movie_path), str(folder / "masks.npy"),
                 str(count)] + (["--before"] if args.before else [])
      output = subprocess.run(command, check=True, capture_output=True, text=True,
                              cwd=repository).stdout
      print_run(json.loads(output.strip().splitlines()[-1]))
  finally:
    shutil.rmtree(folder)


if __name__ == "__main__":
  main()
