"""Random crops: placement, label alignment under flips/rotations/transposes, intensity jitter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile

from neuroseg_jax.data.em_volumes import open_volume
from neuroseg_jax.data.intensity import IntensityStats, standardize
from neuroseg_jax.errors import DataError
from neuroseg_jax.data.volume_crops import (CropAugmentation, crop_origin, jitter_intensity,
                                            random_crop)

VOLUME = np.random.default_rng(0).uniform(size=(10, 24, 30)).astype(np.float32)
GEOMETRY = CropAugmentation(flips=True, rot90=True)


def _window(volume, origin, shape):
  return volume[tuple(slice(o, o + c) for o, c in zip(origin, shape))]


def _flips_and_rotations(block):
  """All 8 x 4 flip / in-plane rot90 combinations of a [d, h, w] block (with repeats)."""
  return [np.rot90(np.flip(block, [a for a in range(3) if flips >> a & 1]), k, axes=(1, 2))
          for flips in range(8) for k in range(4)]


def test_plain_crop_is_the_window_at_the_drawn_origin():
  crop = random_crop(VOLUME, (4, 8, 9), np.random.default_rng(5))
  origin = crop_origin(VOLUME.shape, (4, 8, 9), np.random.default_rng(5))
  np.testing.assert_array_equal(crop.raw, _window(VOLUME, origin, (4, 8, 9)))
  assert crop.raw.dtype == np.float32 and crop.labels == ()
  again = random_crop(VOLUME, (4, 8, 9), np.random.default_rng(5))
  np.testing.assert_array_equal(crop.raw, again.raw)


def test_origins_cover_the_volume_and_crops_fit():
  origins = np.array([crop_origin((10, 24, 30), (4, 8, 9), np.random.default_rng(s))
                      for s in range(400)])
  np.testing.assert_array_equal(origins.min(0), 0)
  np.testing.assert_array_equal(origins.max(0), (6, 16, 21))
  assert crop_origin((4, 8, 9), (4, 8, 9), np.random.default_rng(0)) == (0, 0, 0)


def test_labels_follow_the_same_geometric_transform():
  labels = (np.arange(VOLUME.size) % 1000).reshape(VOLUME.shape).astype(np.uint32)
  seen = set()
  for seed in range(60):
    crop = random_crop(VOLUME, (4, 8, 8), np.random.default_rng(seed), labels=(labels, VOLUME),
                       augmentation=GEOMETRY)
    np.testing.assert_array_equal(crop.labels[1], crop.raw)  # raw itself passed as a label
    assert crop.labels[0].dtype == np.uint32
    origin = crop_origin(VOLUME.shape, (4, 8, 8), np.random.default_rng(seed))
    candidates = _flips_and_rotations(_window(labels, origin, (4, 8, 8)))
    matches = [i for i, c in enumerate(candidates) if np.array_equal(c, crop.labels[0])]
    assert matches, "the crop is not a flip/rotation of the window"
    seen.add(matches[0])
  assert len(seen) >= 12  # many different flips and rotations occur


def test_non_square_crops_rotate_by_180_only_and_isotropic_transposes():
  for seed in range(20):
    crop = random_crop(VOLUME, (3, 6, 10), np.random.default_rng(seed), augmentation=GEOMETRY)
    assert crop.raw.shape == (3, 6, 10)
  cube = np.random.default_rng(1).uniform(size=(8, 8, 8)).astype(np.float32)
  iso = CropAugmentation(flips=False, rot90=False, transpose_axes=(0, 1, 2))
  outputs = {random_crop(cube, (8, 8, 8), np.random.default_rng(s), augmentation=iso).raw.tobytes()
             for s in range(40)}
  expected = {cube.transpose(p).tobytes() for p in
              [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]}
  assert outputs == expected
  with pytest.raises(ValueError, match="equal crop sizes"):
    random_crop(VOLUME, (4, 8, 8), np.random.default_rng(0), augmentation=iso)


def test_2d_crops_come_from_one_slice():
  crop = random_crop(VOLUME, (8, 9), np.random.default_rng(2))
  assert crop.raw.shape == (8, 9)
  z, y, x = crop_origin(VOLUME.shape, (1, 8, 9), np.random.default_rng(2))
  np.testing.assert_array_equal(crop.raw, VOLUME[z, y:y + 8, x:x + 9])
  rotated = random_crop(VOLUME, (8, 8), np.random.default_rng(3), augmentation=GEOMETRY)
  assert rotated.raw.shape == (8, 8)


def test_standardize_and_jitter():
  raw = np.array([[-1.0, 0.0, 1.0, 3.0]], np.float32)
  stats = IntensityStats(low=0.0, high=2.0, mean=0.25, std=0.5)  # [0, 0, .5, 1] -> centred
  expected = [[-0.5, -0.5, 0.5, 1.5]]
  np.testing.assert_allclose(standardize(raw, stats), expected)
  assert standardize(raw.astype(np.uint8), stats).dtype == np.float32
  np.testing.assert_allclose(jax.jit(standardize, static_argnums=1)(jnp.asarray(raw), stats),
                             expected)
  np.testing.assert_allclose(standardize(raw, stats, jitter=lambda unit: 1 - unit),
                             [[1.5, 1.5, 0.5, -0.5]])  # jitter acts on the [0, 1] stage
  aug = CropAugmentation(contrast=(0.5, 1.5), brightness=(-0.1, 0.1), gamma=(0.5, 2.0))
  x = np.random.default_rng(0).uniform(size=(4, 5, 6)).astype(np.float32)
  draws = np.random.default_rng(9)
  c, b, g = draws.uniform(0.5, 1.5), draws.uniform(-0.1, 0.1), draws.uniform(0.5, 2.0)
  expected = np.clip((x - x.mean()) * c + x.mean() + b, 0, 1) ** g
  np.testing.assert_allclose(jitter_intensity(x, np.random.default_rng(9), aug), expected,
                             rtol=1e-5)
  crop = random_crop(VOLUME * 4 - 1, (4, 8, 8), np.random.default_rng(1), augmentation=aug,
                     intensity=IntensityStats(-1.0, 3.0, 0.0, 1.0))
  assert 0 <= crop.raw.min() and crop.raw.max() <= 1 and crop.raw.dtype == np.float32
  plain = random_crop(VOLUME * 4 - 1, (4, 8, 8), np.random.default_rng(1),
                      intensity=IntensityStats(-1.0, 3.0, 0.5, 0.25))
  origin = crop_origin(VOLUME.shape, (4, 8, 8), np.random.default_rng(1))
  np.testing.assert_allclose(plain.raw, (_window(VOLUME, origin, (4, 8, 8)) - 0.5) / 0.25,
                             atol=1e-5)


def test_lazy_volume_source(tmp_path):
  tifffile.imwrite(tmp_path / "v.tif", VOLUME, compression="zlib")
  volume = open_volume(tmp_path / "v.tif")
  crop = random_crop(volume, (4, 8, 9), np.random.default_rng(4))
  in_memory = random_crop(VOLUME, (4, 8, 9), np.random.default_rng(4))
  np.testing.assert_array_equal(crop.raw, in_memory.raw)
  with pytest.raises(DataError, match="v.tif: crop \\(11, 8, 9\\) does not fit"):
    random_crop(volume, (11, 8, 9), np.random.default_rng(0))


def test_bad_crops():
  with pytest.raises(DataError,
                     match=r"crop \(4, 25, 9\) does not fit in volume of shape \(10, 24, 30\)"):
    random_crop(VOLUME, (4, 25, 9), np.random.default_rng(0))
  with pytest.raises(DataError, match="must be \\(d, h, w\\) or \\(h, w\\)"):
    random_crop(VOLUME, (1, 2, 3, 4), np.random.default_rng(0))
  with pytest.raises(DataError, match="label shape"):
    random_crop(VOLUME, (4, 8, 9), np.random.default_rng(0), labels=(VOLUME[:5],))
