"""Lazy EM volume readers: SNEMI3D / MitoEM layouts, TIFF stacks, HDF5; bad inputs."""

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from neuroseg_jax.data import em_volumes, image_files
from neuroseg_jax.data.em_volumes import open_mitoem, open_snemi3d, open_volume
from neuroseg_jax.data.intensity import intensity_stats
from neuroseg_jax.data.stacks import Hdf5Stack, SliceFolderStack
from neuroseg_jax.data.tiff_stack import TiffStack
from neuroseg_jax.errors import DataError


def _raw(shape=(6, 20, 30), seed=0, dtype=np.uint8):
  return np.random.default_rng(seed).integers(0, 255, size=shape).astype(dtype)


def _labels(shape=(6, 20, 30)):
  return (np.arange(np.prod(shape)) // 37).reshape(shape).astype(np.uint32)


def _write_tiff(path, array, mode):
  if mode == "pages":  # one untagged page per write: tifffile sees one series per page
    with tifffile.TiffWriter(path) as writer:
      for page in array:
        writer.write(page, contiguous=False)
  else:
    tifffile.imwrite(path, array, compression="zlib" if mode == "zlib" else None)


def _check_indexing(volume, array):
  assert volume.shape == array.shape and volume.dtype == array.dtype
  assert len(volume) == array.shape[0]
  for key in [(slice(1, 4), slice(2, 19), slice(5, 25)), (slice(None),), 3, -1, (2, slice(3, 7)),
              (slice(0, 2), 5, slice(None)), (slice(4, 100), slice(-5, None), slice(0, 1))]:
    np.testing.assert_array_equal(volume[key], array[key])


@pytest.mark.parametrize("mode", ["plain", "zlib", "pages"])
def test_snemi3d_layout(tmp_path, mode):
  raw, labels = _raw(), _labels()
  _write_tiff(tmp_path / "train-input.tif", raw, mode)
  _write_tiff(tmp_path / "train-labels.tif", labels, mode)
  volume = open_snemi3d(tmp_path)
  _check_indexing(volume.raw, raw)
  _check_indexing(volume.labels, labels)
  _write_tiff(tmp_path / "test-input.tif", raw, mode)
  assert open_snemi3d(tmp_path, "test").labels is None


def test_compressed_stack_reads_only_the_needed_pages(tmp_path, monkeypatch):
  raw = _raw()
  _write_tiff(tmp_path / "v.tif", raw, "zlib")
  volume = open_volume(tmp_path / "v.tif")
  reads = []
  original = tifffile.TiffPage.asarray
  monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda self, *a, **k: reads.append(self.index)
                      or original(self, *a, **k))
  np.testing.assert_array_equal(volume[2:4, 1:3], raw[2:4, 1:3])
  assert reads == [2, 3]


def test_uncompressed_stack_is_memory_mapped(tmp_path, monkeypatch):
  raw = _raw()
  _write_tiff(tmp_path / "v.tif", raw, "plain")
  volume = open_volume(tmp_path / "v.tif")
  monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: pytest.fail("page read"))
  np.testing.assert_array_equal(volume[1:3, 4:9, 2:5], raw[1:3, 4:9, 2:5])
  assert isinstance(volume.stack._array, np.memmap)


def _write_png_slices(folder, array, name="im"):
  folder.mkdir(parents=True, exist_ok=True)
  for z, page in enumerate(array):
    Image.fromarray(page).save(folder / f"{name}{z:04d}.png")


def test_mitoem_layout_label_folders(tmp_path, monkeypatch):
  raw, labels = _raw((6, 20, 30)), _labels((6, 20, 30))
  _write_png_slices(tmp_path / "im", raw)
  for split, zs in (("train", range(0, 4)), ("val", range(4, 6))):
    folder = tmp_path / f"mito-{split}-v2"
    folder.mkdir()
    for z in zs:
      tifffile.imwrite(folder / f"seg{z:04d}.tif", labels[z])
  train = open_mitoem(tmp_path, "train")
  _check_indexing(train.raw, raw[:4])
  _check_indexing(train.labels, labels[:4])
  val = open_mitoem(tmp_path, "val")
  np.testing.assert_array_equal(val.raw[:], raw[4:6])
  np.testing.assert_array_equal(val.labels[:], labels[4:6])
  # Reading z 1..2 decodes exactly those two slice files.
  decoded = []
  original = image_files.read_image_file
  monkeypatch.setattr(image_files, "read_image_file",
                      lambda p: decoded.append(p.name) or original(p))
  train.raw[1:3, :4, :4]
  assert decoded == ["im0001.png", "im0002.png"]


def test_mitoem_layout_hdf5_labels_and_test_split(tmp_path):
  raw, labels = _raw((6, 20, 30)), _labels((6, 20, 30)).astype(np.uint64)
  _write_png_slices(tmp_path / "im", raw)
  with h5py.File(tmp_path / "labels.h5", "w") as f:
    f["main"] = labels[:5]
  train = open_mitoem(tmp_path, "train", labels_path=tmp_path / "labels.h5")
  np.testing.assert_array_equal(train.raw[:], raw[:5])
  np.testing.assert_array_equal(train.labels[2:4, 3:9], labels[2:4, 3:9])
  assert train.labels.dtype == np.uint64
  test = open_mitoem(tmp_path, "train", labels_path=None)  # no label folder: all raw slices
  assert test.labels is None and test.raw.shape == (6, 20, 30)
  with pytest.raises(DataError, match="missing raw slices"):
    with h5py.File(tmp_path / "long.h5", "w") as f:
      f["main"] = labels
    open_mitoem(tmp_path, "val", labels_path=tmp_path / "long.h5")


def test_hdf5_and_generic_dispatch(tmp_path):
  raw = _raw(dtype=np.float32)
  with h5py.File(tmp_path / "one.h5", "w") as f:
    f.create_dataset("group/raw", data=raw, chunks=(1, 10, 10))
  volume = open_volume(tmp_path / "one.h5")  # the only dataset
  assert isinstance(volume.stack, Hdf5Stack) and volume.name.endswith("one.h5:group/raw")
  _check_indexing(volume, raw)
  tifffile.imwrite(tmp_path / "stack.tiff", raw)
  assert isinstance(open_volume(tmp_path / "stack.tiff").stack, TiffStack)
  _write_png_slices(tmp_path / "slices", raw[:, :, :].astype(np.uint8))
  folder = open_volume(tmp_path / "slices")
  assert isinstance(folder.stack, SliceFolderStack) and folder.shape == raw.shape


def test_intensity_stats_use_first_middle_last_slices(tmp_path):
  raw = _raw((7, 20, 30), dtype=np.float32)
  tifffile.imwrite(tmp_path / "v.tif", raw)
  sample = raw[[0, 3, 6]]
  stats = intensity_stats(open_volume(tmp_path / "v.tif"), (1, 99))
  low, high = np.percentile(sample, (1, 99))
  scaled = np.clip((sample - low) / (high - low), 0, 1)
  np.testing.assert_allclose(stats, (low, high, scaled.mean(), scaled.std()), rtol=1e-6)


def test_real_tomogram(shared_data):
  path = shared_data / "volumes" / "tomo.tif"
  if not path.exists():
    pytest.skip(f"{path} is absent")
  volume = open_volume(path)
  assert volume.shape == (101, 135, 135) and volume.dtype == np.float32
  full = tifffile.imread(path)
  np.testing.assert_array_equal(volume[40:46, 10:106, 20:116], full[40:46, 10:106, 20:116])
  stats = intensity_stats(volume)
  assert full.min() < stats.low < stats.high < full.max()


# ---------------------------------------------------------------- bad inputs


def test_missing_and_unreadable_files(tmp_path):
  with pytest.raises(DataError, match="nope.tif: file not found"):
    open_volume(tmp_path / "nope.tif")
  with pytest.raises(DataError, match="slice folder not found|file not found"):
    open_volume(tmp_path / "nodir")
  (tmp_path / "bad.tif").write_text("not a tiff")
  with pytest.raises(DataError, match="bad.tif: not a readable TIFF file"):
    open_volume(tmp_path / "bad.tif")
  (tmp_path / "bad.h5").write_text("not hdf5")
  with pytest.raises(DataError, match="bad.h5: not a readable HDF5 file"):
    open_volume(tmp_path / "bad.h5")
  (tmp_path / "v.npy").write_bytes(b"")
  with pytest.raises(DataError, match=r"v\.npy: unknown stack format '\.npy'"):
    open_volume(tmp_path / "v.npy")
  with pytest.raises(DataError, match="file not found"):
    open_snemi3d(tmp_path)
  (tmp_path / "im").mkdir()
  (tmp_path / "im" / "im0000.png").write_bytes(b"garbage")
  with pytest.raises(DataError, match="im0000.png: not a readable image file"):
    open_mitoem(tmp_path, "train")


def test_wrong_dimensionality(tmp_path):
  tifffile.imwrite(tmp_path / "2d.tif", _raw()[0])
  with pytest.raises(DataError, match=r"2d.tif: expected a 3-D stack \[N, H, W\] of 2-D "
                     r"grayscale pages, got one page of shape \(20, 30\)"):
    open_volume(tmp_path / "2d.tif")
  tifffile.imwrite(tmp_path / "rgb_page.tif", _raw((10, 12, 3)), photometric="rgb")
  with pytest.raises(DataError, match=r"rgb_page.tif: expected .* got pages of shape \(10, 12, 3\) \(samples"):
    open_volume(tmp_path / "rgb_page.tif")
  tifffile.imwrite(tmp_path / "rgb.tif", _raw((4, 10, 12, 3)), photometric="rgb")
  with pytest.raises(DataError, match=r"rgb.tif: expected .* got pages of shape \(10, 12, 3\) \(samples"):
    open_volume(tmp_path / "rgb.tif")
  with h5py.File(tmp_path / "two.h5", "w") as f:
    f["a"], f["b"] = _raw()[0], _raw()
  with pytest.raises(DataError,
                     match=r"two.h5:a: expected a 3-D stack \[N, H, W\], got shape \(20, 30\)"):
    open_volume(tmp_path / "two.h5", key="a")
  with pytest.raises(DataError, match=r"two.h5: give a dataset key \(found: a, b\)"):
    open_volume(tmp_path / "two.h5")
  with pytest.raises(DataError, match=r"two.h5: no dataset 'c' \(found: a, b\)"):
    open_volume(tmp_path / "two.h5", key="c")
  (tmp_path / "rgb").mkdir()
  Image.fromarray(_raw((10, 12, 3))).save(tmp_path / "rgb" / "im0000.png")
  with pytest.raises(DataError, match="im0000.png: expected a 2-D grayscale image"):
    open_volume(tmp_path / "rgb")


def test_empty_constant_and_mismatched_volumes(tmp_path):
  with h5py.File(tmp_path / "empty.h5", "w") as f:
    f["raw"] = np.zeros((0, 4, 4), np.uint8)
  with pytest.raises(DataError, match=r"empty.h5:raw: empty stack of shape \(0, 4, 4\)"):
    open_volume(tmp_path / "empty.h5")
  tifffile.imwrite(tmp_path / "flat.tif", np.full((5, 8, 8), 7, np.uint8))
  with pytest.raises(DataError, match="flat.tif: constant volume"):
    open_volume(tmp_path / "flat.tif")
  assert open_volume(tmp_path / "flat.tif", check_constant=False).shape == (5, 8, 8)
  tifffile.imwrite(tmp_path / "train-input.tif", _raw())
  tifffile.imwrite(tmp_path / "train-labels.tif", _labels((5, 20, 30)))
  with pytest.raises(DataError, match="label shape .* differs from raw shape"):
    open_snemi3d(tmp_path)
  folder = tmp_path / "slices"
  _write_png_slices(folder, _raw((5, 10, 12)))
  volume = open_volume(folder)
  Image.fromarray(_raw((10, 11))).save(folder / "im0001.png")  # headers are checked on opening
  with pytest.raises(DataError, match=r"im0001.png: image is \(10, 11\), but the first slice "
                     r"im0000.png is \(10, 12\)"):
    open_volume(folder)
  with pytest.raises(IndexError, match="out of range"):
    volume[9]
  with pytest.raises(IndexError, match="step-1"):
    volume[::2]


def test_axis_range_views():
  array = _raw()
  view = em_volumes.AxisRange(array, 1, 6)
  assert view.shape == (5, 20, 30) and view.dtype == np.uint8
  _check_indexing(view, array[1:6])
  _check_indexing(em_volumes.AxisRange(array, 3, 25, axis=2), array[:, :, 3:25])
  _check_indexing(em_volumes.AxisRange(array, 0, 7, axis=1), array[:, :7])
  with pytest.raises(DataError, match=r"z range \[4, 9\) is not inside \[0, 6\)"):
    em_volumes.AxisRange(array, 4, 9)


def test_binned_volume_mean_pools_lazily(tmp_path):
  array = _raw((9, 10, 13)).astype(np.float32)
  tifffile.imwrite(tmp_path / "v.tif", array)
  binned = em_volumes.BinnedVolume(open_volume(tmp_path / "v.tif"), (2, 2, 3))
  assert binned.shape == (4, 5, 4) and binned.dtype == np.float32
  expected = array[:8, :10, :12].reshape(4, 2, 5, 2, 4, 3).mean(axis=(1, 3, 5))
  np.testing.assert_allclose(binned[:], expected, rtol=1e-6)
  np.testing.assert_allclose(binned[1:3, 2:4, 1:2], expected[1:3, 2:4, 1:2], rtol=1e-6)
  with pytest.raises(DataError, match=r"v.tif\[bin 2x2x3\]: volume .* smaller than one bin"):
    em_volumes.BinnedVolume(binned, (1, 1, 5))
  with pytest.raises(DataError, match="three positive integers"):
    em_volumes.BinnedVolume(array, (2, 0, 1))


def test_gaussian_filtered_volume_matches_whole_volume_filter(tmp_path):
  array = np.random.default_rng(3).normal(size=(12, 30, 41)).astype(np.float32)
  tifffile.imwrite(tmp_path / "v.tif", array)
  sigma = (0.5, 1.5, 2.0)
  filtered = em_volumes.GaussianFilteredVolume(open_volume(tmp_path / "v.tif"), sigma)
  assert filtered.shape == array.shape and filtered.dtype == np.float32
  expected = ndimage.gaussian_filter(array, sigma, mode="reflect")
  # Blocks touching the borders, the interior and a single voxel all match the whole-volume
  # filter, and the result is far from the unfiltered noise.
  for window in [np.s_[:], np.s_[3:7, 10:20, 12:30], np.s_[0:2, 25:30, 0:5], np.s_[5, 14, 20]]:
    np.testing.assert_allclose(filtered[window], expected[window], rtol=1e-5, atol=1e-6)
  assert filtered[:].std() < 0.5 * array.std()
  with pytest.raises(DataError, match=r"v.tif: low-pass sigma must be three non-negative"):
    em_volumes.GaussianFilteredVolume(open_volume(tmp_path / "v.tif"), (0, 0, 0))
  with pytest.raises(DataError, match="low-pass sigma"):
    em_volumes.GaussianFilteredVolume(array, (1.0, -1.0, 1.0))
