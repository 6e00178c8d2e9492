"""Deterministic two-photon calcium-imaging simulator with ground truth.

The expected photon rate of pixel p in frame t is

  E[t, p] = photons_per_unit * drift[t] * (1 - shadow[p])
            * (neuropil[p] * neuropil_gain[t] + sum_i soma_i[p] * F_i[t])

with elliptical somata (`soma_i`: brightness * a profile dimmed over the
nucleus), fluorescence F_i[t] = 1 + dF/F_i[t] where dF/F is Poisson spikes
convolved with a GCaMP-like double-exponential kernel (zero for silent cells),
a smooth neuropil field with a slow global fluctuation, dark curvy vessel
shadows and a slow photobleaching-like drift. Frames are optionally shifted
rigidly (motion), then photon shot noise is drawn: movie = Poisson(E).
Masks are given in the unshifted (motion-corrected) frame of reference.

Everything is drawn from `np.random.default_rng(seed)`: same config + seed ->
identical recording.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage
import scipy.signal


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
  """Recording parameters (lengths in pixels, times in seconds)."""
  height: int = 128
  width: int = 128
  frames: int = 64
  frame_rate_hz: float = 30.0
  cells_per_10k_pixels: float = 12.0  # ABO 275 um: ~200-350 labeled cells in 487x487.
  radius_range: tuple[float, float] = (4.0, 7.0)  # soma semi-axes.
  brightness_range: tuple[float, float] = (0.5, 1.5)  # resting soma brightness.
  nucleus_fraction: float = 0.5  # nucleus semi-axes relative to the soma's.
  nucleus_dimming: float = 0.6  # fraction of brightness missing over the nucleus.
  active_fraction: float = 0.6
  spike_rate_hz: float = 2.0
  dff_per_spike_range: tuple[float, float] = (0.5, 1.5)
  rise_time_s: float = 0.05
  decay_time_s: float = 0.6
  neuropil_level: float = 0.4
  neuropil_scale: float = 8.0  # spatial smoothness of the neuropil field.
  neuropil_fluctuation: float = 0.05
  num_vessels: int = 2
  vessel_width_range: tuple[float, float] = (3.0, 7.0)
  vessel_darkening: float = 0.6
  drift: float = 0.1  # fractional brightness lost from first to last frame.
  photons_per_unit: float = 30.0
  motion_std: float = 0.0  # rigid shift per frame (pixels, per axis).
  subpixel_motion: bool = True


@dataclasses.dataclass
class Recording:
  """A simulated recording.

  movie: [T, H, W] float32 photon counts; masks: [N, H, W] bool soma supports;
  active: [N] bool, cells with >= 1 spike; dff: [N, T] float32 dF/F traces;
  spikes: [N, T] int32 spike counts per frame; shifts: [T, 2] float32 (row, col)
  motion applied to each frame; config, seed: what produced it.
  """
  movie: np.ndarray
  masks: np.ndarray
  active: np.ndarray
  dff: np.ndarray
  spikes: np.ndarray
  shifts: np.ndarray
  config: SimulationConfig
  seed: int


def vessel_shadow(config: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
  """[H, W] float32 in [0, vessel_darkening]: dark sinuous bands with soft edges."""
  rows, cols = np.mgrid[:config.height, :config.width].astype(np.float32)
  shadow = np.zeros((config.height, config.width), np.float32)
  for _ in range(config.num_vessels):
    angle = rng.uniform(0, np.pi)
    centre_row, centre_col = rng.uniform(0, config.height), rng.uniform(0, config.width)
    along = (rows - centre_row) * np.sin(angle) + (cols - centre_col) * np.cos(angle)
    across = (rows - centre_row) * np.cos(angle) - (cols - centre_col) * np.sin(angle)
    wavelength = rng.uniform(0.5, 1.5) * max(config.height, config.width)
    amplitude = rng.uniform(0.05, 0.15) * wavelength
    bend = amplitude * np.sin(2 * np.pi * along / wavelength + rng.uniform(0, 2 * np.pi))
    half_width = rng.uniform(*config.vessel_width_range) / 2
    band = np.clip(half_width + 0.5 - np.abs(across - bend), 0.0, 1.0)
    shadow = np.maximum(shadow, config.vessel_darkening * band)
  return shadow


def place_somata(config: SimulationConfig, shadow: np.ndarray, rng: np.random.Generator):
  """Non-overlapping ellipses away from vessels.

  Returns (centres [N, 2] (row, col), semi_axes [N, 2], angles [N]); N may fall
  short of the density target when the field is crowded.
  """
  target = int(round(config.cells_per_10k_pixels * config.height * config.width / 1e4))
  centres, axes, angles = [], [], []
  for _ in range(50 * max(target, 1)):
    if len(centres) == target:
      break
    semi = rng.uniform(*config.radius_range, size=2)
    radius = semi.max()
    if 2 * radius + 2 > min(config.height, config.width):
      continue
    centre = rng.uniform(radius + 1, [config.height - radius - 1, config.width - radius - 1])
    apart = all(np.hypot(*(centre - c)) >= radius + a.max() + 1 for c, a in zip(centres, axes))
    if apart and shadow[int(centre[0]), int(centre[1])] < 0.5 * config.vessel_darkening:
      centres.append(centre)
      axes.append(semi)
      angles.append(rng.uniform(0, np.pi))
  return (np.reshape(centres, (-1, 2)), np.reshape(axes, (-1, 2)), np.asarray(angles))


def soma_patch(centre, semi_axes, angle, config: SimulationConfig):
  """One soma: (window (row slice, col slice) inside the image, profile [h, w]
  float32, support [h, w] bool); profile is 1 on the cytoplasm and
  1 - nucleus_dimming over the nucleus."""
  reach = int(np.ceil(semi_axes.max())) + 1
  r0, c0 = max(int(centre[0]) - reach, 0), max(int(centre[1]) - reach, 0)
  r1 = min(int(centre[0]) + reach + 1, config.height)
  c1 = min(int(centre[1]) + reach + 1, config.width)
  rows, cols = np.mgrid[r0:r1, c0:c1].astype(np.float32)
  dr, dc = rows - centre[0], cols - centre[1]
  u = dr * np.cos(angle) + dc * np.sin(angle)
  v = -dr * np.sin(angle) + dc * np.cos(angle)
  rho = np.hypot(u / semi_axes[0], v / semi_axes[1])
  support = rho <= 1.0
  profile = support * (1.0 - config.nucleus_dimming * (rho <= config.nucleus_fraction))
  return (slice(r0, r1), slice(c0, c1)), profile.astype(np.float32), support


def calcium_kernel_filter(spikes: np.ndarray, config: SimulationConfig) -> np.ndarray:
  """Spike counts [N, T] -> calcium [N, T]: convolution with the kernel
  exp(-t / decay) - exp(-t / rise), scaled so one spike peaks at 1."""
  dt = 1.0 / config.frame_rate_hz
  decay, rise = np.exp(-dt / config.decay_time_s), np.exp(-dt / config.rise_time_s)
  steps = np.arange(int(10 * config.decay_time_s / dt) + 2)
  peak = np.max(decay**steps - rise**steps)
  slow = scipy.signal.lfilter([1.0], [1.0, -decay], spikes, axis=-1)
  fast = scipy.signal.lfilter([1.0], [1.0, -rise], spikes, axis=-1)
  return ((slow - fast) / peak).astype(np.float32)


def draw_spikes(num_cells: int, active: np.ndarray, config: SimulationConfig,
                rng: np.random.Generator) -> np.ndarray:
  """[N, T] int32 Poisson spike counts; active cells get >= 1 spike, others none."""
  rate = config.spike_rate_hz / config.frame_rate_hz
  spikes = rng.poisson(rate, size=(num_cells, config.frames)).astype(np.int32)
  spikes[~active] = 0
  silent_but_active = np.flatnonzero(active & (spikes.sum(axis=1) == 0))
  spikes[silent_but_active, rng.integers(0, config.frames, len(silent_but_active))] = 1
  return spikes


def smooth_field(shape, scale: float, rng: np.random.Generator) -> np.ndarray:
  """Gaussian-filtered white noise rescaled to [0, 1] (any shape)."""
  field = scipy.ndimage.gaussian_filter(rng.normal(size=shape), scale, mode="wrap")
  return ((field - field.min()) / max(np.ptp(field), 1e-12)).astype(np.float32)


def apply_motion(frames: np.ndarray, config: SimulationConfig, rng: np.random.Generator):
  """Rigidly shifts each frame [T, H, W] in place; returns the shifts [T, 2]."""
  shifts = rng.normal(0.0, config.motion_std, size=(len(frames), 2)).astype(np.float32)
  if not config.subpixel_motion:
    shifts = np.round(shifts)
  if config.motion_std > 0:
    for frame, shift in zip(frames, shifts):
      frame[:] = scipy.ndimage.shift(frame, shift, order=1, mode="nearest")
  return shifts


def simulate_recording(config: SimulationConfig = SimulationConfig(), seed: int = 0) -> Recording:
  """Draws one recording; see the module docstring for the model."""
  rng = np.random.default_rng(seed)
  height, width, frames = config.height, config.width, config.frames
  shadow = vessel_shadow(config, rng)
  centres, semi_axes, angles = place_somata(config, shadow, rng)
  num_cells = len(centres)
  brightness = rng.uniform(*config.brightness_range, size=num_cells).astype(np.float32)
  active = rng.random(num_cells) < config.active_fraction
  spikes = draw_spikes(num_cells, active, config, rng)
  dff = calcium_kernel_filter(spikes, config)
  dff *= rng.uniform(*config.dff_per_spike_range, size=(num_cells, 1)).astype(np.float32)

  neuropil = config.neuropil_level * (0.5 + smooth_field((height, width), config.neuropil_scale,
                                                         rng))
  neuropil_gain = 1 + config.neuropil_fluctuation * (
      2 * smooth_field(frames, config.frame_rate_hz, rng) - 1)
  rate = neuropil[None] * neuropil_gain[:, None, None]
  masks = np.zeros((num_cells, height, width), bool)
  for i in range(num_cells):
    window, profile, support = soma_patch(centres[i], semi_axes[i], angles[i], config)
    rate[(slice(None),) + window] += (brightness[i] * (1 + dff[i]))[:, None, None] * profile
    masks[(i,) + window] = support
  drift = 1 - config.drift * np.linspace(0.0, 1.0, frames, dtype=np.float32)
  rate *= (config.photons_per_unit * (1 - shadow))[None] * drift[:, None, None]
  shifts = apply_motion(rate, config, rng)
  movie = rng.poisson(rate).astype(np.float32)
  return Recording(movie=movie, masks=masks, active=active, dff=dff, spikes=spikes,
                   shifts=shifts, config=config, seed=seed)
