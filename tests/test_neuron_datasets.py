"""Labeled-image sources: simulated, YOLO folder, Neurofinder, movie + masks."""

import json

import numpy as np
import pytest
import skimage.io
import tifffile

from neuroseg_jax.errors import DataError
from neuroseg_jax.data.neuron_datasets import NEURON_SOURCES, load_neuron_samples
from neuroseg_jax.data.twophoton_sim import SimulationConfig, simulate_recording
from neuroseg_jax.registry import UnknownNameError

TINY_SIM = dict(height=64, width=64, frames=64)  # the summary-image test's compiled shape.


def test_registry_lists_sources():
  assert NEURON_SOURCES.names() == ["movie_masks", "neurofinder", "simulated", "yolo_folder"]
  with pytest.raises(UnknownNameError, match="unknown neuron data source 'abo'"):
    load_neuron_samples("abo")


def test_simulated_labels_are_the_active_cells():
  samples = load_neuron_samples("simulated", num_recordings=2, seed=4, chunk_size=32, **TINY_SIM)
  again = load_neuron_samples("simulated", num_recordings=2, seed=4, chunk_size=32, **TINY_SIM)
  assert [s.name for s in samples] == ["sim_4_0", "sim_4_1"]
  assert not np.array_equal(samples[0].masks, samples[1].masks)  # independent recordings.
  config = SimulationConfig(**TINY_SIM)
  for sample, repeat in zip(samples, again):
    np.testing.assert_array_equal(sample.image, repeat.image)
    assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.float32
    assert 0 <= sample.image.min() and sample.image.max() <= 1
    # The labels are exactly the active cells of some recording of this config ...
    all_cells = [simulate_recording(config, seed) for seed in _spawned_seeds(4, 2)]
    matches = [r for r in all_cells if np.array_equal(r.masks[r.active], sample.masks)]
    assert len(matches) == 1 and (~matches[0].active).any()  # ... silent cells left out.
    corr = sample.image[..., 2]
    assert corr[sample.masks.any(0)].mean() > corr[~matches[0].masks.any(0)].mean() + 0.2


def _spawned_seeds(seed, n):
  return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


def write_yolo_folder(root):
  (root / "images").mkdir(parents=True)
  (root / "labels").mkdir()
  image = np.zeros((20, 30), np.uint8)
  image[5:10, 5:15] = 200
  for name in ("b", "a"):
    skimage.io.imsave(root / "images" / f"{name}.png", image, check_contrast=False)
    (root / "labels" / f"{name}.txt").write_text("0 0.2 0.25 0.4 0.25 0.4 0.45 0.2 0.45\n")
  return root


def test_yolo_folder(tmp_path):
  samples = load_neuron_samples("yolo_folder", folder=write_yolo_folder(tmp_path / "y"),
                                num_channels=2)
  assert [s.name for s in samples] == ["a", "b"]
  image, masks = samples[0].image, samples[0].masks
  assert image.shape == (20, 30, 2) and np.array_equal(image[..., 0], image[..., 1])
  assert set(np.unique(image)) == {0.0, 1.0}
  expected = np.zeros((1, 20, 30), bool)
  expected[0, 5:10, 6:13] = True  # rows 0.25..0.45 * 20, cols 0.2..0.4 * 30.
  np.testing.assert_array_equal(masks, expected)
  only_b = load_neuron_samples("yolo_folder", folder=tmp_path / "y", names=["b"])
  assert [s.name for s in only_b] == ["b"]
  with pytest.raises(DataError, match=r"y: no images named \['c'\]"):
    load_neuron_samples("yolo_folder", folder=tmp_path / "y", names=["c"])


def test_real_abo_folder(shared_data):
  samples = load_neuron_samples("yolo_folder", folder=shared_data / "abo275",
                                names=["501484643_0"])
  assert samples[0].image.shape == (487, 487, 3) and len(samples[0].masks) == 254


def test_neurofinder_source(tmp_path):
  recording = simulate_recording(SimulationConfig(**TINY_SIM), seed=0)
  folder = tmp_path / "neurofinder.00.00"
  (folder / "images").mkdir(parents=True)
  (folder / "regions").mkdir()
  for t, frame in enumerate(recording.movie.astype(np.uint16)):
    tifffile.imwrite(folder / "images" / f"image{t:05d}.tiff", frame)
  regions = [{"coordinates": np.argwhere(m).tolist()} for m in recording.masks]
  (folder / "regions" / "regions.json").write_text(json.dumps(regions))
  [sample] = load_neuron_samples("neurofinder", folders=[folder], chunk_size=32)
  assert sample.name == "neurofinder.00.00" and sample.image.shape == (64, 64, 3)
  np.testing.assert_array_equal(sample.masks, recording.masks)


def test_movie_masks_source(tmp_path):
  recording = simulate_recording(SimulationConfig(**TINY_SIM), seed=1)
  tifffile.imwrite(tmp_path / "rec.tif", recording.movie)
  labels = np.zeros((64, 64), np.uint16)
  for i, mask in enumerate(recording.masks):
    labels[mask] = i + 1
  tifffile.imwrite(tmp_path / "rec_labels.tif", labels)
  [sample] = load_neuron_samples("movie_masks", movie_paths=[tmp_path / "rec.tif"],
                                 mask_paths=[tmp_path / "rec_labels.tif"],
                                 channels=("mean", "corr"), normalization="zscore",
                                 chunk_size=32)
  assert sample.name == "rec" and sample.image.shape == (64, 64, 2)
  assert abs(sample.image[..., 0].mean()) < 1e-5
  np.testing.assert_array_equal(sample.masks, recording.masks)
  with pytest.raises(ValueError, match="1 movies but 0 label files"):
    load_neuron_samples("movie_masks", movie_paths=[tmp_path / "rec.tif"], mask_paths=[])
