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
import itertools
from typing import NamedTuple

import cc3d
import numpy as np
from scipy import ndimage, spatial

BLOCK = (8, 32, 32)  # voxels per block of the cell assignment (compact, so few candidates)


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
  mitochondria_per_cell: float = 1.5
  mito_half_length: tuple = (5.0, 12.0)  # voxels, along the cell axis.
  mito_radius: tuple = (2.0, 3.5)        # voxels.
  mito_level: float = 0.38
  mito_membrane_level: float = 0.15
  blur_sigma: tuple = (0.3, 0.8, 0.8)    # z, y, x voxels.
  noise_std: float = 0.04

  def zoomed(self, zoom: float) -> "EMSimulationParams":
    """These params with every structure `zoom` times larger in voxels (cell diameter,
    boundary warp, mitochondrion length and radius); z spacing, blur and noise stay.
    zoom 2 gives mitochondria 8-14 voxels across, nearer MitoEM's size in voxels."""
    scale = lambda pair: tuple(zoom * v for v in pair)
    return dataclasses.replace(
        self, cell_diameter=zoom * self.cell_diameter, warp_amplitude=zoom * self.warp_amplitude,
        mito_half_length=scale(self.mito_half_length), mito_radius=scale(self.mito_radius))


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
  v = rng.normal(size=(n, 3))
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def _smooth_field(rng: np.random.Generator, shape, z_spacing: float, scale: float) -> np.ndarray:
  """[D, H, W] smooth random field with unit-ish amplitude and correlation length ~scale voxels."""
  coarse = [max(2, int(np.ceil(s * step / scale)) + 1)
            for s, step in zip(shape, (z_spacing, 1.0, 1.0))]
  field = ndimage.zoom(rng.normal(size=coarse), [s / c for s, c in zip(shape, coarse)], order=1)
  return field[:shape[0], :shape[1], :shape[2]]


def _quadratic_features(points: np.ndarray) -> np.ndarray:
  """[n, 3] points -> [n, 10] monomials (p0^2, p1^2, p2^2, p0p1, p0p2, p1p2, p0, p1, p2, 1)."""
  p0, p1, p2 = points.T
  return np.stack([p0 * p0, p1 * p1, p2 * p2, p0 * p1, p0 * p2, p1 * p2, p0, p1, p2,
                   np.ones_like(p0)], axis=1)


def _quadratic_weights(seeds: np.ndarray, metrics: np.ndarray) -> np.ndarray:
  """Seeds [n, 3] and metrics [n, 3, 3] -> [10, n] weights with features @ weights
  = (p - s_i)^T M_i (p - s_i) for the monomials of `_quadratic_features`."""
  m = metrics
  linear = -2 * np.einsum("nij,nj->ni", m, seeds)
  constant = np.einsum("ni,nij,nj->n", seeds, m, seeds)
  return np.stack([m[:, 0, 0], m[:, 1, 1], m[:, 2, 2], 2 * m[:, 0, 1], 2 * m[:, 0, 2],
                   2 * m[:, 1, 2], *linear.T, constant])


def _nearest_cells(points: np.ndarray, seeds: np.ndarray, elongations: np.ndarray,
                   weights: np.ndarray, tree: spatial.cKDTree) -> np.ndarray:
  """[n, 3] points of one compact block -> [n] index of the cell minimising its distance.

  Only cells that can win somewhere in the block are scored: the winning distance
  at p is at most its distance to the cell of the Euclidean-nearest seed, and
  cell i's distance is at least |p - s_i|^2 / e_i^2, so a cell whose squared box
  distance over e_i^2 exceeds the block's largest such bound never wins.
  """
  features = _quadratic_features(points)
  nearest = tree.query(points)[1]
  bound = np.einsum("nf,fn->n", features, weights[:, nearest]).max()
  gap = np.maximum(0.0, np.maximum(points.min(0) - seeds, seeds - points.max(0)))
  candidates = np.flatnonzero((gap ** 2).sum(1) / elongations ** 2 <= bound * (1 + 1e-4) + 1e-3)
  return candidates[np.argmin(features @ weights[:, candidates], axis=1)]


def _neurite_labels(rng, shape, params: EMSimulationParams):
  """Anisotropic-Voronoi cells -> (labels [D, H, W] int64 seed index, axes [n, 3])."""
  extent = np.array(shape, float) * (params.z_spacing, 1.0, 1.0)
  margin = params.cell_diameter / 2
  mean_elongation = np.mean(params.elongation)
  cell_volume = 0.5 * params.cell_diameter ** 3 * mean_elongation
  num_cells = max(4, int(round(np.prod(extent + 2 * margin) / cell_volume)))
  # Coordinates centred on the volume keep the float32 quadratic forms accurate.
  seeds = rng.uniform(-margin, extent + margin, size=(num_cells, 3)) - extent / 2
  axes = _unit_vectors(rng, num_cells)
  elongations = rng.uniform(*params.elongation, size=num_cells)
  squash = 1.0 - elongations ** -2.0
  metrics = np.eye(3)[None] - squash[:, None, None] * axes[:, :, None] * axes[:, None, :]
  weights = _quadratic_weights(seeds, metrics).astype(np.float32)

  grid = np.meshgrid(*[np.arange(s, dtype=np.float32) * step - e / 2
                       for s, step, e in zip(shape, (params.z_spacing, 1.0, 1.0), extent)],
                     indexing="ij")
  points = np.stack([g + params.warp_amplitude * _smooth_field(rng, shape, params.z_spacing,
                                                               2 * params.cell_diameter)
                     for g in grid], axis=-1)
  tree = spatial.cKDTree(seeds)
  labels = np.zeros(shape, np.int64)
  for z0, y0, x0 in itertools.product(*[range(0, s, b) for s, b in zip(shape, BLOCK)]):
    block = (slice(z0, z0 + BLOCK[0]), slice(y0, y0 + BLOCK[1]), slice(x0, x0 + BLOCK[2]))
    block_points = points[block].reshape(-1, 3)
    labels[block] = _nearest_cells(block_points, seeds, elongations, weights,
                                   tree).reshape(labels[block].shape)
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
  # cc3d treats 0 as background, so seed cells are numbered from 1 here.
  neurons, num_neurons = cc3d.connected_components(seed_labels + 1, connectivity=6, return_N=True)
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
