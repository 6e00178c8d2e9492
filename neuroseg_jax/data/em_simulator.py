"""Synthetic serial-EM volumes with ground truth: packed neurites, membranes, mitochondria.

Generative model (all lengths in in-plane voxels; z slices are `z_spacing` apart):
  * Neurites: an anisotropic Voronoi tessellation. Cell i has a seed s_i, an axis
    u_i and an elongation e_i; a point p belongs to the cell minimising
    |q|^2 - (1 - 1/e_i^2) (q . u_i)^2 with q = warp(p) - s_i, i.e. the distance
    with the component along u_i shrunk e_i-fold, so cells are long tubes along
    their axis. `warp` is a smooth random displacement that bends the
    boundaries. Fragments cut off by the warp become separate instances.
  * Membranes: dark bands on both sides of in-plane label boundaries, fainter
    where the label changes between z slices (oblique membranes).
  * Cytoplasm: per-cell grey level plus fine Gaussian-filtered texture.
  * Mitochondria: ellipsoids inside a cell, aligned with its axis, clipped to the
    cell, with a dark outer membrane and cristae stripes; own instance labels.
  * Imaging: Gaussian blur (smaller in z) and additive Gaussian noise.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import cc3d
import numpy as np
from scipy import ndimage


class SimulatedEM(NamedTuple):
  raw: np.ndarray           # [D, H, W] float32 in [0, 1].
  neurons: np.ndarray       # [D, H, W] uint32 instance ids 1..n, every voxel in a cell.
  mitochondria: np.ndarray  # [D, H, W] uint32 instance ids, 0 = none.


@dataclasses.dataclass(frozen=True)
class EMSimulationParams:
  z_spacing: float = 4.0                 # z slice distance / in-plane voxel size (30 nm / 8 nm).
  cell_diameter: float = 22.0            # typical neurite cross-section, voxels.
  elongation: tuple = (2.5, 8.0)         # range of cell length / width.
  warp_amplitude: float = 4.0            # voxels of smooth boundary bending.
  membrane_level: float = 0.12
  cytoplasm_levels: tuple = (0.55, 0.8)  # range of per-cell grey levels.
  texture_std: float = 0.05
  mitochondria_per_cell: float = 0.5
  mito_half_length: tuple = (5.0, 12.0)  # voxels, along the cell axis.
  mito_radius: tuple = (2.0, 3.5)        # voxels.
  mito_level: float = 0.38
  mito_membrane_level: float = 0.15
  blur_sigma: tuple = (0.3, 0.8, 0.8)    # z, y, x voxels.
  noise_std: float = 0.04


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
  v = rng.normal(size=(n, 3))
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def _smooth_field(rng: np.random.Generator, shape, z_spacing: float, scale: float) -> np.ndarray:
  """[D, H, W] smooth random field with unit-ish amplitude and correlation length ~scale voxels."""
  coarse = [max(2, int(np.ceil(s * step / scale)) + 1)
            for s, step in zip(shape, (z_spacing, 1.0, 1.0))]
  field = ndimage.zoom(rng.normal(size=coarse), [s / c for s, c in zip(shape, coarse)], order=1)
  return field[:shape[0], :shape[1], :shape[2]]


def _neurite_labels(rng, shape, params: EMSimulationParams):
  """Anisotropic-Voronoi cells -> (labels [D, H, W] int64 seed index, axes [n, 3])."""
  extent = np.array(shape, float) * (params.z_spacing, 1.0, 1.0)
  margin = params.cell_diameter / 2
  mean_elongation = np.mean(params.elongation)
  cell_volume = 0.5 * params.cell_diameter ** 3 * mean_elongation
  num_cells = max(4, int(round(np.prod(extent + 2 * margin) / cell_volume)))
  seeds = rng.uniform(-margin, extent + margin, size=(num_cells, 3))
  axes = _unit_vectors(rng, num_cells)
  squash = 1.0 - rng.uniform(*params.elongation, size=num_cells) ** -2.0

  grid = np.meshgrid(*[np.arange(s, dtype=np.float32) * step
                       for s, step in zip(shape, (params.z_spacing, 1.0, 1.0))], indexing="ij")
  points = [g + params.warp_amplitude * _smooth_field(rng, shape, params.z_spacing, 2 * params.cell_diameter)
            for g in grid]
  best = np.full(shape, np.inf, np.float32)
  labels = np.zeros(shape, np.int64)
  for i in range(num_cells):
    q = [p - np.float32(s) for p, s in zip(points, seeds[i])]
    along = q[0] * axes[i, 0] + q[1] * axes[i, 1] + q[2] * axes[i, 2]
    dist = q[0] ** 2 + q[1] ** 2 + q[2] ** 2 - np.float32(squash[i]) * along ** 2
    closer = dist < best
    best[closer], labels[closer] = dist[closer], i
  return labels, axes


def _membrane_strength(labels: np.ndarray) -> np.ndarray:
  """[D, H, W] in [0, 1]: 1 beside in-plane label changes, 0.5 beside z-only changes."""
  strength = np.zeros(labels.shape, np.float32)
  for axis, weight in ((0, 0.5), (1, 1.0), (2, 1.0)):
    lo = [slice(None)] * 3
    hi = [slice(None)] * 3
    lo[axis], hi[axis] = slice(None, -1), slice(1, None)
    change = (labels[tuple(lo)] != labels[tuple(hi)]).astype(np.float32) * weight
    np.maximum(strength[tuple(lo)], change, out=strength[tuple(lo)])
    np.maximum(strength[tuple(hi)], change, out=strength[tuple(hi)])
  return strength


def _add_mitochondria(rng, raw, neurons, membrane, cell_axes, params: EMSimulationParams):
  """Draws mitochondria into `raw` in place; returns their labels [D, H, W] uint32."""
  shape = neurons.shape
  spacing = np.array((params.z_spacing, 1.0, 1.0))
  mito = np.zeros(shape, np.uint32)
  num_mito = rng.poisson(params.mitochondria_per_cell * len(cell_axes))
  next_id = 1
  for _ in range(num_mito):
    center = np.array([rng.integers(s) for s in shape])
    host = neurons[tuple(center)]
    axis = cell_axes[host] + 0.2 * rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    half_length, radius = rng.uniform(*params.mito_half_length), rng.uniform(*params.mito_radius)
    lo = np.maximum(center - np.ceil(half_length / spacing), 0).astype(int)
    hi = np.minimum(center + np.ceil(half_length / spacing) + 1, shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    q = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, center, spacing)],
                    indexing="ij")
    along = sum(qi * ai for qi, ai in zip(q, axis))
    across_sq = sum(qi ** 2 for qi in q) - along ** 2
    level = (along / half_length) ** 2 + across_sq / radius ** 2
    inside = (level <= 1) & (neurons[box] == host) & (membrane[box] < 1) & (mito[box] == 0)
    if inside.sum() < 8:
      continue
    mito[box][inside] = next_id
    next_id += 1
    cristae = 0.06 * np.sin(2 * np.pi * along / 3.0)
    value = np.where(level > 0.55, params.mito_membrane_level, params.mito_level + cristae)
    raw[box][inside] = value[inside]
  return mito


def simulate_em_volume(shape=(32, 128, 128), seed: int = 0,
                       params: EMSimulationParams = EMSimulationParams()) -> SimulatedEM:
  """A synthetic EM volume of `shape` (D, H, W); deterministic for a given seed and params."""
  rng = np.random.default_rng(seed)
  shape = tuple(int(s) for s in shape)
  seed_labels, seed_axes = _neurite_labels(rng, shape, params)
  neurons, num_neurons = cc3d.connected_components(seed_labels, connectivity=6, return_N=True)
  neurons = neurons.astype(np.uint32)
  # Each connected piece inherits the axis of the seed cell it came from.
  piece_seed = np.zeros(num_neurons + 1, np.int64)
  piece_seed[neurons.ravel()] = seed_labels.ravel()
  cell_axes = seed_axes[piece_seed]

  levels = rng.uniform(*params.cytoplasm_levels, size=num_neurons + 1).astype(np.float32)
  texture = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), (0.5, 1.0, 1.0))
  raw = levels[neurons] + params.texture_std * texture / max(float(texture.std()), 1e-6)
  membrane = _membrane_strength(neurons)
  raw = raw * (1 - membrane) + params.membrane_level * membrane
  mitochondria = _add_mitochondria(rng, raw, neurons, membrane, cell_axes, params)

  raw = ndimage.gaussian_filter(raw, params.blur_sigma)
  raw = raw + rng.normal(scale=params.noise_std, size=shape).astype(np.float32)
  return SimulatedEM(np.clip(raw, 0, 1).astype(np.float32), neurons, mitochondria)
