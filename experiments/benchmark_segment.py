"""Movie-to-traces throughput of `segment`'s stages, on an ABO-size TIFF on disk.

Writes a uint16 multipage TIFF of --frames frames of --size x --size pixels into
a temporary folder, frame by frame (never the whole movie in memory; free disk
space is checked first): a static background with --rois bright disc somata,
transients on a third of them, shot-like noise drawn from a bank of 32 noise
frames, and a random-walk integer motion of a few pixels. Then, in a fresh
subprocess per run (so each peak memory is its own), times what the `segment`
command does with a movie after opening it (`data/movie_passes.py`):
  summary   read 1: motion estimated and corrected (whole pixels) as each chunk is
            read, and `compute_summary_images` of the corrected chunks;
  segment   the built-in model on the correlation image (its first call in the
            process, so JAX's tracing is included, and its compilation unless JAX's
            persistent cache, which the `neuroseg-jax` command turns on, holds it
            from an earlier run: the first of the two runs below fills it);
  traces    read 2: `extract_traces` of the corrected movie for the --rois true
            masks (a fixed ROI count, as in an ABO field, whatever the model finds);
and prints, per stage, for the two reads together, and end to end, wall seconds,
frames/s and CPU seconds. The run is repeated on the first half of the frames to
show that memory does not grow with T: peak RssAnon (the process's own memory,
sampled every 20 ms) and ru_maxrss, which also counts the pages of the
memory-mapped TIFF that the process has touched (page cache, reclaimable; it does
grow with T). Last, the whole `neuroseg-jax segment` command on the TIFF
(start-up, both reads, the model, every file written; the network compiles
during read 1): a first run with an empty compilation cache, then a second.
--keep keeps the TIFF (and prints its folder), so that another version of the code
can be timed on the same file with --run.

  python -m experiments.benchmark_segment --frames 23000 --folder W
"""

from __future__ import annotations

import argparse
import json
import os
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

from neuroseg_jax import predictor
from neuroseg_jax import runtime
from neuroseg_jax.data import movie_passes
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


def run_stages(movie_path: Path, masks_path: Path, count: int) -> dict:
  """Times the stages on the first `count` frames; returns the measurements."""
  runtime.keep_freed_memory()  # as the `neuroseg-jax` command does
  runtime.enable_compilation_cache()
  memory = PeakAnonymousMemory()
  masks = np.load(masks_path)
  movie = FirstFrames(open_movie(movie_path), count)
  model = predictor.load_model("builtin")
  compute_summary_images(movie[:100])  # compiles the summary-image step outside the timings.
  timings = {}

  def timed(name, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    timings[name] = (time.perf_counter() - wall, time.process_time() - cpu)
    return result

  summary, corrected = timed("summary", lambda: movie_passes.summarize(movie))
  timed("segment", lambda: model.predict([summary["corr"]]))
  timed("traces", lambda: extract_traces(corrected, masks))
  return {"frames": len(movie), "timings": timings, "peak_anon": memory.stop(),
          "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def print_run(run: dict) -> None:
  frames_done, timings = run["frames"], run["timings"]
  print(f"\n{frames_done} frames")
  print(f"  {'stage':18s} {'wall s':>8s} {'frames/s':>9s} {'CPU s':>8s}")
  rows = dict(timings)
  rows["two reads"] = [sum(timings[k][i] for k in ("summary", "traces")) for i in (0, 1)]
  rows["end to end"] = [sum(t[i] for t in timings.values()) for i in (0, 1)]
  for name, (wall, cpu) in rows.items():
    print(f"  {name:18s} {wall:8.2f} {frames_done / wall:9.0f} {cpu:8.2f}")
  print(f"  peak RssAnon {run['peak_anon'] / 2**20:.0f} MiB, ru_maxrss "
        f"{run['maxrss'] / 2**20:.0f} MiB (includes touched pages of the mapped TIFF)")


def time_runs(folder: Path, frames_count: int) -> None:
  """Times folder/movie.tif on its first half and on all `frames_count` frames, each in
  a fresh process."""
  repository = Path(__file__).resolve().parents[1]
  for count in (frames_count // 2, frames_count):
    command = [sys.executable, "-m", "experiments.benchmark_segment", "--run",
               str(folder / "movie.tif"), str(folder / "masks.npy"), str(count)]
    output = subprocess.run(command, check=True, capture_output=True, text=True,
                            cwd=repository).stdout
    print_run(json.loads(output.strip().splitlines()[-1]))


def time_command(folder: Path, frames_count: int) -> None:
  """Times the whole `neuroseg-jax segment folder/movie.tif` command (start-up, both
  reads, the model and every file written), first with an empty compilation cache
  (a first run on a machine), then again with the cache that run filled."""
  with tempfile.TemporaryDirectory() as scratch:
    environment = {**os.environ, runtime.CACHE_ENV: os.path.join(scratch, "xla")}
    command = [sys.executable, "-m", "neuroseg_jax.cli", "segment", str(folder / "movie.tif"),
               "--out", os.path.join(scratch, "out")]
    print(f"\nthe whole command on {frames_count} frames: {' '.join(command[1:])}")
    for label in ("first run, empty compilation cache", "second run, cache filled"):
      before = resource.getrusage(resource.RUSAGE_CHILDREN)
      wall = time.perf_counter()
      finished = subprocess.run(command, check=True, capture_output=True, text=True,
                                env=environment)
      wall = time.perf_counter() - wall
      after = resource.getrusage(resource.RUSAGE_CHILDREN)
      cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
      print(f"  {label:36s} wall {wall:6.2f} s  {frames_count / wall:5.0f} frames/s  "
            f"CPU {cpu:6.2f} s  ({finished.stdout.strip().splitlines()[-1]})")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--frames", type=int, default=23000)
  parser.add_argument("--size", type=int, default=487)
  parser.add_argument("--rois", type=int, default=300)
  parser.add_argument("--folder", type=Path, default=None,
                      help="where to write the TIFF (default: a new temporary folder)")
  parser.add_argument("--keep", action="store_true", help="keep the TIFF and its masks")
  parser.add_argument("--reuse", type=Path, default=None,
                      help="a folder kept by --keep: time its movie.tif (all its frames)")
  parser.add_argument("--run", nargs=3, metavar=("TIFF", "MASKS", "FRAMES"),
                      help="time one run on an existing TIFF and masks (.npy); JSON on stdout")
  args = parser.parse_args()
  if args.run:
    print(json.dumps(run_stages(Path(args.run[0]), Path(args.run[1]), int(args.run[2]))))
    return

  if args.reuse:
    with tifffile.TiffFile(args.reuse / "movie.tif") as tiff:
      print(f"reusing {args.reuse / 'movie.tif'} ({len(tiff.pages)} frames)")
      frames_count = len(tiff.pages)
    time_runs(args.reuse, frames_count)
    time_command(args.reuse, frames_count)
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
    time_runs(folder, args.frames)
    time_command(folder, args.frames)
  finally:
    if args.keep:
      print(f"kept {folder}")
    else:
      shutil.rmtree(folder)


if __name__ == "__main__":
  main()
