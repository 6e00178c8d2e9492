"""Unlabeled image sources for TiCo: movies, image folders, the simulator, combinations."""

import ml_collections
import numpy as np
import pytest
import tifffile
from PIL import Image

from neuroseg_jax.data import unlabeled_images
from neuroseg_jax.errors import DataError
from neuroseg_jax.registry import UnknownNameError


def _options(**simulator):
  return ml_collections.ConfigDict({
      "window": 10, "seed": 3,
      "simulator": {"num_movies": 1, "height": 32, "width": 32, "frames": 20, **simulator}})


def test_movie_source_gives_windowed_max_projections(tmp_path):
  movie = np.random.default_rng(0).integers(0, 4000, size=(25, 8, 12)).astype(np.uint16)
  tifffile.imwrite(tmp_path / "rec.tif", movie)
  images = unlabeled_images.load_unlabeled_images(f"movie:{tmp_path}/*.tif", _options())
  assert len(images) == 2  # 25 frames -> two full windows of 10, the last 5 left out
  np.testing.assert_array_equal(images[0], movie[:10].max(axis=0))
  np.testing.assert_array_equal(images[1], movie[10:20].max(axis=0))


def test_image_folder_source_reads_images_subfolder_and_ignores_labels(tmp_path):
  (tmp_path / "images").mkdir()
  (tmp_path / "labels").mkdir()
  pixels = [np.full((6, 7), 10 * (i + 1), np.uint8) for i in range(3)]
  for i, image in enumerate(pixels):
    Image.fromarray(image).save(tmp_path / "images" / f"{i}.png")
  (tmp_path / "labels" / "0.txt").write_text("0 0.1 0.1 0.2 0.2 0.1 0.2\n")
  images = unlabeled_images.load_unlabeled_images(f"images:{tmp_path}", _options())
  assert [float(image.mean()) for image in images] == [10.0, 20.0, 30.0]
  assert all(image.shape == (6, 7) and image.dtype == np.float32 for image in images)


def test_simulator_source_and_combinations(tmp_path):
  tifffile.imwrite(tmp_path / "a.tif", np.ones((10, 4, 4), np.float32), photometric="minisblack")
  spec = f"simulator:2+movie:{tmp_path / 'a.tif'}"
  images = unlabeled_images.load_unlabeled_images(spec, _options())
  assert [image.shape for image in images] == [(32, 32)] * 4 + [(4, 4)]  # 2 movies x 2 windows
  assert not np.array_equal(images[0], images[2])  # different recordings (seeds 3 and 4)
  again = unlabeled_images.load_unlabeled_images("simulator", _options())
  np.testing.assert_array_equal(again[0], images[0])  # num_movies=1 default, same seed


def test_bad_sources_fail_clearly(tmp_path):
  with pytest.raises(UnknownNameError, match="unknown unlabeled image source 'videos'"):
    unlabeled_images.load_unlabeled_images("videos:/x", _options())
  with pytest.raises(DataError, match="expected a number of movies"):
    unlabeled_images.load_unlabeled_images("simulator:many", _options())
  with pytest.raises(DataError, match="no such file or folder"):
    unlabeled_images.load_unlabeled_images(f"movie:{tmp_path}/missing*.tif", _options())
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no images"):
    unlabeled_images.load_unlabeled_images(f"images:{tmp_path / 'empty'}", _options())
  tifffile.imwrite(tmp_path / "short.tif", np.ones((5, 4, 4), np.float32), photometric="minisblack")
  with pytest.raises(DataError, match="fewer than one window"):
    unlabeled_images.load_unlabeled_images(f"movie:{tmp_path / 'short.tif'}", _options())


def test_abo_and_sima_give_twelve_images(shared_data):
  spec = (f"images:{shared_data / 'abo275'}"
          f"+movie:{shared_data / 'sima_movie' / 'example.tif'}")
  images = unlabeled_images.load_unlabeled_images(spec, _options())
  assert [image.shape for image in images] == [(487, 487)] * 10 + [(128, 256)] * 2
  sima = tifffile.imread(shared_data / "sima_movie" / "example.tif").astype(np.float32)
  np.testing.assert_array_equal(images[10], sima[:10].max(axis=0))
