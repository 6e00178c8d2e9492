"""Trace extraction on a simulated recording with its true masks, and its pieces."""

import numpy as np
import pytest

from neuroseg_jax.data.traces import (as_masks, extract_traces, neuropil_masks,
                                      running_percentile)
from neuroseg_jax.data.twophoton_sim import SimulationConfig, simulate_recording
from neuroseg_jax.errors import DataError


@pytest.fixture(scope="module")
def recording():
  """96x96, 300 frames (10 s at 30 Hz), 11 cells of which 6 are active."""
  return simulate_recording(SimulationConfig(height=96, width=96, frames=300), seed=0)


@pytest.fixture(scope="module")
def traces(recording):
  return extract_traces(recording.movie, recording.masks, baseline_window=300)


def test_shapes_and_definitions(recording, traces):
  num_cells, num_frames = recording.dff.shape
  for name in ("raw", "neuropil", "corrected", "baseline", "dff"):
    array = getattr(traces, name)
    assert array.shape == (num_cells, num_frames) and array.dtype == np.float32, name
  np.testing.assert_allclose(traces.corrected, traces.raw - 0.7 * traces.neuropil, rtol=1e-6)
  np.testing.assert_allclose(traces.dff * traces.baseline, traces.corrected - traces.baseline,
                             rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(traces.raw[:, 5], [recording.movie[5][m].mean()
                                                for m in recording.masks], rtol=1e-5)
  np.testing.assert_allclose(traces.mean_intensity, traces.raw.mean(1), rtol=1e-6)


def test_active_cells_follow_true_activity_and_silent_cells_stay_flat(recording, traces):
  active = recording.active
  assert 3 <= active.sum() < len(active)  # the recording has both kinds.
  for name in ("corrected", "dff"):
    r = np.array([np.corrcoef(getattr(traces, name)[i], recording.dff[i])[0, 1]
                  for i in np.flatnonzero(active)])
    assert np.mean(r > 0.8) >= 0.8, (name, r)  # at least 80% of active cells.
  spread = traces.dff.std(axis=1)
  assert spread[~active].max() < 0.5 * spread[active].min()
  assert spread[~active].max() < 0.1


def test_small_chunks_equal_one_chunk(recording, traces):
  chunked = extract_traces(recording.movie, recording.masks, baseline_window=300, chunk_size=7)
  for name in ("raw", "neuropil", "corrected", "dff"):
    np.testing.assert_allclose(getattr(chunked, name), getattr(traces, name), atol=1e-5)


def test_label_image_gives_the_same_traces(recording, traces):
  labels = np.zeros(recording.masks.shape[1:], np.uint16)
  for i, mask in enumerate(recording.masks):
    labels[mask] = 10 * (i + 1)  # any increasing labels, not 1..N.
  from_labels = extract_traces(recording.movie, labels, baseline_window=300)
  np.testing.assert_array_equal(from_labels.raw, traces.raw)


def distance_to_box(rows, cols, top, bottom, left, right):
  """Euclidean distance of pixels (rows, cols) to the pixel box [top..bottom, left..right]."""
  dy = np.maximum(np.maximum(top - rows, rows - bottom), 0)
  dx = np.maximum(np.maximum(left - cols, cols - right), 0)
  return np.hypot(dy, dx)


def test_neuropil_annulus_leaves_out_every_roi_and_the_gap():
  labels = np.zeros((40, 40), np.int32)
  labels[18:22, 18:22] = 1  # the ROI.
  labels[18:22, 26:29] = 2  # a neighbour 4 px to its right.
  masks = as_masks(labels)
  annulus = neuropil_masks(masks, inner_gap=2, outer_radius=8, min_neuropil_pixels=1)[0]
  rows, cols = np.nonzero(annulus)
  assert not (annulus & masks.any(0)).any()
  to_roi = distance_to_box(rows, cols, 18, 21, 18, 21)
  assert (to_roi > 2).all() and (to_roi <= 8).all()
  assert (distance_to_box(rows, cols, 18, 21, 26, 28) > 2).all()  # clear of the neighbour too.
  assert annulus[20, 11] and annulus[26, 20] and not annulus[20, 24]  # [20, 24]: between them.


def test_crowded_annulus_grows_to_the_minimum():
  labels = np.zeros((60, 60), np.int32)
  labels[28:32, 28:32] = 1
  annulus = neuropil_masks(as_masks(labels), inner_gap=2, outer_radius=3,
                           min_neuropil_pixels=200)[0]
  assert annulus.sum() >= 200


def test_running_percentile_shrinks_and_tracks_a_slow_baseline():
  t = np.arange(500)
  trace = (100 + 0.1 * t + 30 * (t % 50 < 5)).astype(np.float32)[None]  # drift + transients.
  baseline = running_percentile(trace, window=100, percentile=8)
  np.testing.assert_allclose(baseline[0, 50:450], 100 + 0.1 * t[50:450], atol=6)
  short = running_percentile(trace[:, :20], window=1800, percentile=50)  # window > T.
  np.testing.assert_allclose(short, np.median(trace[:, :20]), rtol=1e-6)


def test_baseline_is_floored_when_corrected_trace_is_not_positive():
  movie = np.full((50, 20, 20), 10.0, np.float32)
  movie[:, 8:12, 8:12] = 5.0  # a ROI dimmer than 0.7 x its neuropil: corrected < 0.
  traces = extract_traces(movie, as_masks(np.pad(np.ones((4, 4), np.int32), 8)))
  assert (traces.corrected < 0).all() and (traces.baseline > 0).all()
  assert np.isfinite(traces.dff).all()


def test_bad_masks_are_data_errors():
  with pytest.raises(DataError, match="has no pixels"):
    as_masks(np.zeros((2, 5, 5), bool))
  with pytest.raises(DataError, match="ROI masks are"):
    extract_traces(np.zeros((5, 8, 8), np.float32), np.ones((1, 9, 9), bool))


def test_no_rois_gives_empty_traces_of_the_movie_length():
  movie = np.random.default_rng(0).random((30, 32, 32)).astype(np.float32)
  result = extract_traces(movie, np.zeros((0, 32, 32), bool))
  assert result.dff.shape == (0, 30) and result.raw.shape == (0, 30)
  assert result.mean_intensity.shape == (0,)
