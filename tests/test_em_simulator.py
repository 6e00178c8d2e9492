"""EM simulator: determinism, label consistency, dark membranes, mitochondria inside cells."""

import cc3d
import numpy as np
import pytest

from neuroseg_jax.data.em_simulator import EMSimulationParams, simulate_em_volume


@pytest.fixture(scope="module")
def volume():
  return simulate_em_volume((16, 96, 96), seed=3)


def test_shapes_types_and_determinism(volume):
  raw, neurons, mito = volume
  assert raw.shape == neurons.shape == mito.shape == (16, 96, 96)
  assert raw.dtype == np.float32 and neurons.dtype == mito.dtype == np.uint32
  assert 0.0 <= raw.min() and raw.max() <= 1.0 and 0.05 < raw.std()
  again = simulate_em_volume((16, 96, 96), seed=3)
  for a, b in zip(volume, again):
    np.testing.assert_array_equal(a, b)
  other = simulate_em_volume((16, 96, 96), seed=4)
  assert not np.array_equal(other.neurons, neurons)


def test_neurons_are_dense_connected_instances(volume):
  neurons = volume.neurons
  assert neurons.min() >= 1
  ids = np.unique(neurons)
  np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
  assert len(ids) >= 15  # densely packed cells, not a handful of blobs
  relabeled, count = cc3d.connected_components(neurons, connectivity=6, return_N=True)
  assert count == len(ids)  # every label is one connected piece


def test_membranes_are_dark(volume):
  raw, neurons, mito = volume
  boundary = np.zeros(neurons.shape, bool)
  change = neurons[:, :, 1:] != neurons[:, :, :-1]
  boundary[:, :, 1:] |= change
  boundary[:, :, :-1] |= change
  change = neurons[:, 1:] != neurons[:, :-1]
  boundary[:, 1:] |= change
  boundary[:, :-1] |= change
  interior = ~boundary & (mito == 0)
  interior[:, 1:-1, 1:-1] &= ~boundary[:, :-2, 1:-1] & ~boundary[:, 2:, 1:-1]
  assert raw[interior].mean() - raw[boundary].mean() > 0.2


def test_mitochondria_sit_inside_one_cell_and_are_dark(volume):
  raw, neurons, mito = volume
  ids = np.unique(mito[mito > 0])
  assert len(ids) >= 5
  for i in ids:
    hosts = np.unique(neurons[mito == i])
    assert len(hosts) == 1, f"mitochondrion {i} spans cells {hosts}"
    assert (mito == i).sum() >= 8
  assert raw[mito > 0].mean() < raw[(mito == 0)].mean() - 0.1


def test_anisotropy_and_noise_parameters():
  # Finer z spacing -> more z-slices per cell -> labels agree more often between slices.
  shape = (8, 48, 48)
  coarse = simulate_em_volume(shape, 0, EMSimulationParams(z_spacing=8.0)).neurons
  fine = simulate_em_volume(shape, 0, EMSimulationParams(z_spacing=1.0)).neurons
  same_z = lambda labels: (labels[1:] == labels[:-1]).mean()
  assert same_z(fine) > same_z(coarse) + 0.1
  clean = simulate_em_volume(shape, 0, EMSimulationParams(noise_std=0.0)).raw
  noisy = simulate_em_volume(shape, 0, EMSimulationParams(noise_std=0.1)).raw
  residual = (noisy - clean)[(clean > 0.2) & (clean < 0.8)]
  assert residual.std() == pytest.approx(0.1, rel=0.1)


def test_blockwise_cell_assignment_is_exact():
  # Candidate pruning must give the brute-force argmin over all cells.
  from scipy import spatial
  from neuroseg_jax.data import em_simulator as sim
  rng = np.random.default_rng(0)
  seeds = rng.uniform(-60, 60, size=(80, 3))
  axes = rng.normal(size=(80, 3))
  axes /= np.linalg.norm(axes, axis=1, keepdims=True)
  elongations = rng.uniform(2.5, 8.0, size=80)
  squash = 1 - elongations ** -2.0
  metrics = np.eye(3)[None] - squash[:, None, None] * axes[:, :, None] * axes[:, None, :]
  weights = sim._quadratic_weights(seeds, metrics).astype(np.float32)
  points = rng.uniform(-8, 8, size=(2000, 3)).astype(np.float32) + np.float32([10, -5, 3])
  got = sim._nearest_cells(points, seeds, elongations, weights, spatial.cKDTree(seeds))
  q = points[:, None, :] - seeds[None]
  dist = (q ** 2).sum(-1) - (1 - elongations ** -2.0) * (q * axes[None]).sum(-1) ** 2
  np.testing.assert_array_equal(got, dist.argmin(1))


def test_zoom_enlarges_cells_and_mitochondria():
  params = EMSimulationParams()
  zoomed = params.zoomed(2.0)
  assert zoomed.cell_diameter == 44.0 and zoomed.mito_radius == (4.0, 7.0)
  assert zoomed.z_spacing == params.z_spacing and zoomed.noise_std == params.noise_std
  plain, big = (simulate_em_volume((12, 96, 96), 3, p) for p in (params, zoomed))

  def mean_size(labels):
    counts = np.bincount(labels.ravel())[1:]
    return counts[counts > 0].mean()

  assert mean_size(big.neurons) > 2.5 * mean_size(plain.neurons)
  assert mean_size(big.mitochondria) > 2.5 * mean_size(plain.mitochondria)
