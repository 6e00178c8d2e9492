"""Rigid motion correction: known shifts recovered, ShiftedMovie re-aligns lazily."""

import numpy as np
import pytest
import scipy.ndimage

from neuroseg_jax.data.motion import MotionCorrectedMovie, ShiftedMovie, estimate_shifts
from neuroseg_jax.data.motion import shift_frames
from neuroseg_jax.data.movies import ArrayMovie
from neuroseg_jax.data.twophoton_sim import SimulationConfig, simulate_recording
from neuroseg_jax.errors import DataError

FRAMES = 60


@pytest.fixture(scope="module")
def still():
  """[60, 128, 128] simulated movie without motion."""
  return simulate_recording(SimulationConfig(height=128, width=128, frames=FRAMES), seed=3).movie


def displaced(movie, shifts):
  """Each frame's content moved by its (dy, dx), the simulator's convention."""
  return np.stack([scipy.ndimage.shift(f, s, order=3, mode="nearest")
                   for f, s in zip(movie, shifts)]).astype(np.float32)


def mean_frame_correlation(a, b):
  a = a.reshape(len(a), -1) - a.mean(axis=(1, 2))[:, None]
  b = b.reshape(len(b), -1) - b.mean(axis=(1, 2))[:, None]
  return float(np.mean((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))))


@pytest.mark.parametrize("subpixel, binning", [(False, 2), (True, 2), (True, 1)])
def test_known_shifts_recovered_within_half_a_pixel(still, subpixel, binning):
  shifts = np.random.default_rng(0).uniform(-5, 5, (FRAMES, 2)).astype(np.float32)
  shifts = shifts if subpixel else np.round(shifts)
  got = estimate_shifts(displaced(still, shifts), reference=still.mean(0), chunk_size=16,
                        binning=binning)
  assert got.shape == (FRAMES, 2) and got.dtype == np.float32
  assert np.abs(got - shifts).max() < 0.5


def test_default_reference_gives_shifts_up_to_a_common_offset(still):
  shifts = np.random.default_rng(1).normal(0, 2, (FRAMES, 2)).astype(np.float32)
  got = estimate_shifts(displaced(still, shifts), reference_frames=30)
  offset = np.median(got - shifts, axis=0)
  assert np.abs(got - shifts - offset).max() < 0.5


def test_shifted_movie_realigns_chunk_by_chunk(still):
  shifts = np.round(np.random.default_rng(2).uniform(-4, 4, (FRAMES, 2))).astype(np.float32)
  moved = displaced(still, shifts)
  corrected = ShiftedMovie(moved, estimate_shifts(moved, reference=still.mean(0)))
  assert corrected.shape == still.shape and corrected.dtype == np.float32
  realigned = np.concatenate([corrected[t:t + 7] for t in range(0, FRAMES, 7)])
  assert (mean_frame_correlation(realigned, still)
          > mean_frame_correlation(moved, still) + 0.1)
  inside = (slice(None), slice(6, -6), slice(6, -6))  # away from edge-repeated pixels.
  exact = ShiftedMovie(moved, shifts)[:]
  np.testing.assert_allclose(exact[inside], still[inside], atol=1e-3)


class CountingMovie(ArrayMovie):
  """Counts the frames read from it."""
  frames_read = 0

  def _read(self, start, stop):
    self.frames_read += stop - start
    return super()._read(start, stop)


@pytest.mark.parametrize("whole_pixels", [False, True])
def test_correcting_while_reading_equals_estimate_then_shift(still, whole_pixels):
  shifts = np.random.default_rng(5).uniform(-4, 4, (FRAMES, 2)).astype(np.float32)
  moved = displaced(still, shifts)
  reference = still.mean(0)
  expected_shifts = estimate_shifts(moved, reference=reference, chunk_size=16)
  expected = ShiftedMovie(moved, expected_shifts, whole_pixels=whole_pixels)[:]
  source = CountingMovie(moved)
  corrected = MotionCorrectedMovie(source, reference=reference, whole_pixels=whole_pixels)
  got = np.concatenate([corrected[t:t + 16] for t in range(0, FRAMES, 16)])
  assert source.frames_read == FRAMES  # one read serves estimation and correction
  np.testing.assert_allclose(corrected.all_shifts(), expected_shifts, atol=1e-5)
  np.testing.assert_allclose(got, expected, atol=1e-4)
  assert source.frames_read == FRAMES  # every shift was known already
  copied = all(np.isin(frame, raw).all() for frame, raw in zip(got, moved))
  assert copied == whole_pixels  # whole pixels are copied, fractions interpolated


def test_all_shifts_estimates_the_frames_not_read(still):
  corrected = MotionCorrectedMovie(still, reference=still.mean(0))
  corrected[10:20]
  np.testing.assert_allclose(corrected.all_shifts(),
                             estimate_shifts(still, reference=still.mean(0)), atol=1e-5)


def test_shift_frames_integer_is_exact_and_fractional_is_bilinear():
  frame = np.arange(36, dtype=np.float32).reshape(1, 6, 6)  # value = 6 * row + col.
  np.testing.assert_array_equal(shift_frames(frame, [[1, -2]])[0, 1:4, 3:5],
                                frame[0, 2:5, 1:3])
  np.testing.assert_allclose(shift_frames(frame, [[0.5, 0.25]])[0, :4, :4],
                             frame[0, :4, :4] + 6 * 0.5 + 0.25, rtol=1e-6)


@pytest.mark.parametrize("dy,dx", [(0, 0), (3, -2), (-5, 4), (6, 9), (-9, -6), (12, 1), (-2, -14)])
def test_whole_pixel_shifts_copy_with_edges_repeated(dy, dx):
  """The copy path equals clamped indexing, out[y, x] = frame[clip(y + dy), clip(x + dx)],
  also for shifts of a whole frame or more."""
  frame = np.random.default_rng(4).random((1, 7, 10)).astype(np.float32)
  rows = np.clip(np.arange(7) + dy, 0, 6)
  cols = np.clip(np.arange(10) + dx, 0, 9)
  np.testing.assert_array_equal(shift_frames(frame, [[dy, dx]])[0], frame[0][rows[:, None], cols])


def test_shift_count_must_match_frames(still):
  with pytest.raises(DataError, match=r"shifts must be finite \[T, 2\]"):
    ShiftedMovie(still, np.zeros((FRAMES - 1, 2)))


def test_too_small_frames_are_a_data_error():
  with pytest.raises(DataError, match="too small for motion estimation"):
    estimate_shifts(np.ones((5, 12, 40), np.float32))
