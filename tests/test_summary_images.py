"""Chunked JAX summary images against direct NumPy computations."""

import h5py
import numpy as np
import pytest

from experiments import benchmark_summary_images
from neuroseg_jax.errors import DataError
from neuroseg_jax.data.movies import open_movie
from neuroseg_jax.data.summary_images import (compute_summary_images, stack_channels,
                                              windowed_max_projections)
from neuroseg_jax.data.twophoton_sim import SimulationConfig, simulate_recording
from neuroseg_jax.registry import UnknownNameError


def numpy_summaries(movie, window):
  """Direct float64 definitions, one pixel pair at a time for the correlation."""
  x = movie.astype(np.float64)
  num_frames, height, width = x.shape
  whole = num_frames // window * window
  corr = np.zeros((height, width))
  for r in range(height):
    for c in range(width):
      values = []
      for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
          if (dr or dc) and 0 <= r + dr < height and 0 <= c + dc < width:
            a, b = x[:, r, c], x[:, r + dr, c + dc]
            values.append(0.0 if a.std() == 0 or b.std() == 0 else np.corrcoef(a, b)[0, 1])
      corr[r, c] = np.mean(values)
  return {"mean": x.mean(0), "max": x.max(0), "std": x.std(0), "corr": corr,
          "robust_max": x[:whole].reshape(-1, window, height, width).mean(1).max(0)}


@pytest.fixture
def movie():
  """[23, 6, 7]: a large offset, shared and private signals, one constant pixel."""
  rng = np.random.default_rng(1)
  shared = rng.normal(size=(23, 1, 1))
  x = 3000 + 5 * rng.normal(size=(23, 6, 7)) + 4 * shared * (np.arange(7) > 3)
  x[:, 2, 1] = 2990.0
  return x.astype(np.float32)


@pytest.mark.parametrize("chunk_size", [8, 40])  # 8 does not divide T = 23; 40 > T.
def test_matches_numpy(movie, chunk_size):
  got = compute_summary_images(movie, chunk_size=chunk_size, window=4)
  want = numpy_summaries(movie, window=4)
  for name in ("mean", "max", "robust_max"):
    np.testing.assert_allclose(got[name], want[name], rtol=2e-6, err_msg=name)
  np.testing.assert_allclose(got["std"], want["std"], rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(got["corr"], want["corr"], atol=2e-5)
  assert got["corr"][2, 1] == 0.0  # constant pixel.
  assert all(v.shape == (6, 7) and v.dtype == np.float32 for v in got.values())


def test_long_movie_with_large_offset_stays_accurate():
  """2000 frames at ~3000 counts with std ~3: float32 sums would lose the variance
  without centring and two-level summation."""
  x = (3000 + np.random.default_rng(2).normal(0, 3, size=(2000, 6, 7))).astype(np.float32)
  got = compute_summary_images(x, chunk_size=8, window=4)
  want = x.astype(np.float64)
  np.testing.assert_allclose(got["mean"], want.mean(0), rtol=1e-7)
  np.testing.assert_allclose(got["std"], want.std(0), rtol=1e-5)


def test_streams_a_lazy_movie_the_same_way(tmp_path, movie):
  with h5py.File(tmp_path / "m.h5", "w") as f:
    f["mov"] = movie
  with open_movie(tmp_path / "m.h5") as lazy:
    streamed = compute_summary_images(lazy, chunk_size=8, window=4)
  in_memory = compute_summary_images(movie, chunk_size=8, window=4)
  for name in in_memory:
    np.testing.assert_array_equal(streamed[name], in_memory[name])


def test_too_few_frames(movie):
  with pytest.raises(DataError, match="array: 3 frames, fewer than the robust-max window of 4"):
    compute_summary_images(movie[:3], window=4)


def test_windowed_max_projections(movie):
  got = windowed_max_projections(movie, window=4, chunk_size=12)
  np.testing.assert_array_equal(got, movie[:20].reshape(5, 4, 6, 7).max(1))


def test_correlation_image_highlights_active_cells():
  recording = simulate_recording(SimulationConfig(height=64, width=64, frames=64), seed=3)
  corr = compute_summary_images(recording.movie, chunk_size=32)["corr"]
  active = recording.masks[recording.active].any(0)
  silent = recording.masks[~recording.active].any(0)
  background = ~recording.masks.any(0)
  assert active.any() and silent.any()
  assert corr[active].mean() > corr[background].mean() + 0.3
  assert corr[active].mean() > corr[silent].mean() + 0.3


def numpy_corr_vectorized(x):
  """Mean neighbour correlation in float64 by the benchmark's NumPy reference."""
  return benchmark_summary_images.numpy_correlation_image(x.astype(np.float64))


def test_vectorized_reference_agrees_with_pairwise_one(movie):
  np.testing.assert_allclose(numpy_corr_vectorized(movie), numpy_summaries(movie, 4)["corr"],
                             atol=1e-12)


def test_real_sima_movie(shared_data):
  with open_movie(shared_data / "sima_movie" / "example.tif") as movie:
    got = compute_summary_images(movie, chunk_size=8, window=4)
    frames = movie[:].astype(np.float64)
  np.testing.assert_allclose(got["mean"], frames.mean(0), rtol=1e-6)
  np.testing.assert_allclose(got["std"], frames.std(0), rtol=1e-4, atol=1e-3)
  np.testing.assert_array_equal(got["max"], frames.max(0))
  np.testing.assert_allclose(got["corr"], numpy_corr_vectorized(frames), atol=1e-4)
  assert got["corr"].max() > 0.5  # somata stand out.


def test_stack_channels_percentile_and_zscore():
  rng = np.random.default_rng(0)
  summary = {"a": rng.normal(size=(8, 9)), "b": rng.normal(5, 3, size=(8, 9)),
             "flat": np.ones((8, 9))}
  stacked = stack_channels(summary, ("b", "a", "flat"), "percentile")
  assert stacked.shape == (8, 9, 3) and stacked.dtype == np.float32
  lo, hi = np.percentile(summary["b"], [1, 99.5])
  np.testing.assert_allclose(stacked[..., 0], np.clip((summary["b"] - lo) / (hi - lo), 0, 1),
                             rtol=1e-6)
  np.testing.assert_array_equal(stacked[..., 2], 0)
  z = stack_channels(summary, ("b",), "zscore")[..., 0]
  assert abs(z.mean()) < 1e-6 and z.std() == pytest.approx(1, rel=1e-5)
  with pytest.raises(KeyError, match="corr"):
    stack_channels(summary, ("corr",))
  with pytest.raises(UnknownNameError, match="unknown channel normalization 'minmax'"):
    stack_channels(summary, ("a",), "minmax")
