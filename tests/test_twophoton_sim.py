"""Two-photon simulator: determinism, ground truth, and each physical ingredient."""

import dataclasses

import numpy as np
import pytest

from experiments import benchmark_twophoton_sim
from neuroseg_jax.data.twophoton_sim import (SimulationConfig, calcium_kernel_filter,
                                             simulate_recording)

SMALL = SimulationConfig(height=48, width=48, frames=32)
# No cells, vessels, drift or neuropil fluctuation: a flat-rate Poisson movie.
EMPTY = dataclasses.replace(SMALL, cells_per_10k_pixels=0.0, num_vessels=0, drift=0.0,
                            neuropil_fluctuation=0.0, frames=400)


def test_same_seed_same_recording_other_seed_differs():
  a, b = simulate_recording(SMALL, seed=5), simulate_recording(SMALL, seed=5)
  for field in ("movie", "masks", "active", "dff", "spikes", "shifts"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert not np.array_equal(a.movie, simulate_recording(SMALL, seed=6).movie)


def test_shapes_and_ground_truth():
  rec = simulate_recording(SimulationConfig(), seed=0)
  n = len(rec.masks)
  assert rec.movie.shape == (64, 128, 128) and rec.movie.dtype == np.float32
  assert rec.masks.shape == (n, 128, 128) and rec.masks.dtype == bool
  assert n == round(12.0 * 128 * 128 / 1e4)  # density reached in a sparse field.
  assert rec.masks.sum(0).max() == 1  # somata do not overlap.
  assert rec.masks.reshape(n, -1).any(1).all()
  np.testing.assert_array_equal(rec.active, rec.spikes.sum(1) > 0)  # active = fired.
  assert 0 < rec.active.sum() < n
  np.testing.assert_array_equal(rec.dff[~rec.active], 0)
  assert (rec.movie >= 0).all() and np.array_equal(rec.movie, np.round(rec.movie))  # counts.


def test_benchmark_times_every_recording():
  small = SimulationConfig(height=16, width=16, frames=4)
  times = benchmark_twophoton_sim.recording_seconds(small, repeats=2)
  assert len(times) == 2 and all(t > 0 for t in times)


def test_calcium_kernel_rises_peaks_at_one_and_decays():
  config = SimulationConfig(frame_rate_hz=30.0, rise_time_s=0.05, decay_time_s=0.6)
  spikes = np.zeros((1, 200))
  spikes[0, 10] = 1
  trace = calcium_kernel_filter(spikes, config)[0]
  assert (trace[:10] == 0).all()
  assert trace.max() == pytest.approx(1.0, abs=1e-6)
  assert 10 < np.argmax(trace) < 20
  t = np.arange(190) / 30.0  # the closed form of the double exponential.
  kernel = np.exp(-t / 0.6) - np.exp(-t / 0.05)
  np.testing.assert_allclose(trace[10:], kernel / kernel.max(), atol=1e-6)


def test_shot_noise_is_poisson_and_drift_dims_the_end():
  rec = simulate_recording(EMPTY, seed=0)
  assert len(rec.masks) == 0
  ratio = rec.movie.var(0) / rec.movie.mean(0)  # Poisson: variance = mean.
  assert ratio.mean() == pytest.approx(1.0, abs=0.03)
  drifting = simulate_recording(dataclasses.replace(EMPTY, drift=0.2), seed=0).movie
  assert drifting[-20:].mean() / drifting[:20].mean() == pytest.approx(0.8, abs=0.02)


def test_nucleus_is_dimmer_than_cytoplasm():
  config = dataclasses.replace(SMALL, radius_range=(6.0, 7.0), active_fraction=0.0,
                               photons_per_unit=1e4, neuropil_level=0.0)
  rec = simulate_recording(config, seed=1)
  mean = rec.movie.mean(0)
  for mask in rec.masks:
    rows, cols = np.nonzero(mask)
    centre = mean[int(round(rows.mean())), int(round(cols.mean()))]
    assert centre < 0.6 * mean[mask].max()


def test_vessels_darken_the_field():
  plain = dataclasses.replace(EMPTY, frames=8)
  with_vessels = simulate_recording(dataclasses.replace(plain, num_vessels=2), seed=0).movie
  without = simulate_recording(plain, seed=0).movie
  darkening = 1 - with_vessels.mean(0) / without.mean(0)
  assert 0.02 < (darkening > 0.4).mean() < 0.5  # a minority of pixels, strongly darkened.


@pytest.mark.parametrize("subpixel", [True, False])
def test_rigid_motion(subpixel):
  config = dataclasses.replace(SMALL, motion_std=1.5, subpixel_motion=subpixel)
  rec = simulate_recording(config, seed=0)
  assert rec.shifts.shape == (32, 2)
  assert rec.shifts.std() == pytest.approx(1.5, rel=0.3)
  assert np.array_equal(rec.shifts, np.round(rec.shifts)) != subpixel
  still = simulate_recording(SMALL, seed=0)
  np.testing.assert_array_equal(still.shifts, 0)
  np.testing.assert_array_equal(rec.masks, still.masks)  # masks in the unshifted frame.
