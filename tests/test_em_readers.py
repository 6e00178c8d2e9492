"""Serial-section EM input layer: slice folders in numeric order, zarr stores, membrane maps
read as instances, voxel sizes from metadata, volumes stacked along z, the "file" source.

(Multipage TIFF, HDF5 without a key, SNEMI3D and MitoEM layouts, gaps and mismatched sizes
in slice folders and misaligned labels are tested in test_em_volumes.py / test_faults_data.py.)
"""

import logging
import re

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from neuroseg_jax.data import em_labels, em_sources
from neuroseg_jax.data.em_volumes import ConcatenatedVolume, open_volume, read_voxel_size
from neuroseg_jax.data.zarr_stack import ZarrStack
from neuroseg_jax.errors import ConfigError, DataError


def _raw(shape=(5, 12, 14), seed=0):
  return np.random.default_rng(seed).integers(0, 255, size=shape).astype(np.uint8)


def _names(path, problem):
  """A regex matching a message that names `path` and then `problem`."""
  return re.escape(str(path)) + ": .*" + problem


def _write_folder(folder, array, suffix=".png"):
  folder.mkdir(parents=True)
  for z, page in enumerate(array):
    if suffix == ".png":
      Image.fromarray(page).save(folder / f"{z}{suffix}")
    else:
      tifffile.imwrite(folder / f"{z}{suffix}", page)
  return folder


def _cells(shape=(3, 12, 14), value=255):
  """Membrane maps: a membrane grid (0) cutting each slice into 3 x 2 interiors (`value`),
  the grid shifted per slice."""
  maps = np.full(shape, value, np.uint8)
  for z in range(shape[0]):
    maps[z, [3 + z, 8], :] = 0
    maps[z, :, 6 + z] = 0
  return maps


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_numbered_slice_folder_in_numeric_order(tmp_path, suffix):
  array = _raw((12, 6, 7)) // 12 * 12 + np.arange(12, dtype=np.uint8)[:, None, None]
  volume = open_volume(_write_folder(tmp_path / "slices", array, suffix))  # 10 after 9, not 1
  assert [p.name for p in volume.stack.files][9:] == [f"{z}{suffix}" for z in (9, 10, 11)]
  assert volume.shape == array.shape and volume.dtype == np.uint8
  np.testing.assert_array_equal(volume[:], array)
  np.testing.assert_array_equal(volume[8:12, 2:5], array[8:12, 2:5])


def test_zarr_store_with_a_key(tmp_path):
  raw, labels = _raw(), np.arange(5 * 12 * 14, dtype=np.uint64).reshape(5, 12, 14)
  root = zarr.open_group(str(tmp_path / "v.zarr"), mode="w")
  root.create_array("volumes/raw", shape=raw.shape, dtype=raw.dtype, chunks=(2, 5, 5))[:] = raw
  root.create_array("volumes/labels", shape=labels.shape, dtype=labels.dtype)[:] = labels
  root["volumes"].attrs["resolution"] = [40, 4, 4]
  volume = open_volume(tmp_path / "v.zarr", key="volumes/raw")
  assert isinstance(volume.stack, ZarrStack)
  assert volume.name == f"{tmp_path / 'v.zarr'}:volumes/raw"
  np.testing.assert_array_equal(volume[:], raw)
  np.testing.assert_array_equal(volume[1:4, 3:11, 2:9], raw[1:4, 3:11, 2:9])  # across chunks
  np.testing.assert_array_equal(open_volume(tmp_path / "v.zarr", key="volumes/labels")[2],
                                labels[2])
  assert read_voxel_size(tmp_path / "v.zarr", "volumes/raw") == (40.0, 4.0, 4.0)  # parent group
  zarr.open_array(str(tmp_path / "bare.zarr"), mode="w", shape=raw.shape, dtype=raw.dtype)[:] = raw
  np.testing.assert_array_equal(open_volume(tmp_path / "bare.zarr")[:], raw)
  assert read_voxel_size(tmp_path / "bare.zarr") is None
  with pytest.raises(DataError, match=_names(tmp_path / "v.zarr", "no array 'raw' "
                                             r"\(found: volumes/labels, volumes/raw\)")):
    open_volume(tmp_path / "v.zarr", key="raw")


def test_zarr_store_with_two_arrays_needs_a_key(tmp_path):
  root = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
  root.create_array("a", shape=(2, 4, 4), dtype="uint8")
  root.create_array("b", shape=(2, 4, 4), dtype="uint8")
  with pytest.raises(DataError, match=_names(tmp_path / "two.zarr",
                                             r"give an array key \(found: a, b\)")):
    open_volume(tmp_path / "two.zarr", check_constant=False)
  (tmp_path / "junk.zarr").mkdir()
  with pytest.raises(DataError, match=_names(tmp_path / "junk.zarr", "not a readable zarr")):
    open_volume(tmp_path / "junk.zarr")


def test_voxel_size_from_hdf5_attributes(tmp_path):
  raw = _raw()
  with h5py.File(tmp_path / "v.h5", "w") as f:
    f["volumes/raw"] = raw
    f["volumes/other"] = raw
    f["volumes"].attrs["resolution"] = [40.0, 4.0, 4.0]
    f["volumes/raw"].attrs["voxel_size"] = np.array([30, 6, 6])  # the dataset's own comes first
  np.testing.assert_array_equal(open_volume(tmp_path / "v.h5", key="volumes/raw")[:], raw)
  assert read_voxel_size(tmp_path / "v.h5", "volumes/raw") == (30.0, 6.0, 6.0)
  assert read_voxel_size(tmp_path / "v.h5", "volumes/other") == (40.0, 4.0, 4.0)
  with h5py.File(tmp_path / "bare.h5", "w") as f:
    f["raw"] = raw
  assert read_voxel_size(tmp_path / "bare.h5") is None
  assert read_voxel_size(_write_folder(tmp_path / "slices", raw)) is None


def test_voxel_size_from_imagej_tiff(tmp_path):
  raw = _raw()
  tifffile.imwrite(tmp_path / "v.tif", raw, imagej=True, resolution=(1 / 0.004, 1 / 0.005),
                   metadata={"spacing": 0.05, "unit": "um"})
  np.testing.assert_allclose(read_voxel_size(tmp_path / "v.tif"), (50.0, 5.0, 4.0))
  tifffile.imwrite(tmp_path / "nm.tif", raw, imagej=True, resolution=(0.25, 0.25),
                   metadata={"spacing": 30.0, "unit": "nm"})
  np.testing.assert_allclose(read_voxel_size(tmp_path / "nm.tif"), (30.0, 4.0, 4.0))
  tifffile.imwrite(tmp_path / "plain.tif", raw, photometric="minisblack")
  assert read_voxel_size(tmp_path / "plain.tif") is None


# ---------------------------------------------------------------- membrane maps


def test_interiors_touching_diagonally_are_two_instances():
  membrane = np.array([[255, 0, 0],
                       [0, 255, 0],
                       [0, 0, 0]], np.uint8)
  labels = em_labels.membrane_to_instances(membrane)
  np.testing.assert_array_equal(labels, [[1, 0, 0], [0, 2, 0], [0, 0, 0]])


def test_membrane_volume_ids_unique_across_slices():
  maps = _cells()
  volume = em_labels.MembraneInstanceVolume(maps)
  full = volume[:]
  assert full.dtype == np.uint64 and full.shape == maps.shape
  ids = [set(np.unique(s)) - {0} for s in full]
  assert all(len(s) == 6 for s in ids)
  assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
  assert min(ids[2]) == 2 * 2**32 + 1
  np.testing.assert_array_equal(full == 0, maps == 0)
  np.testing.assert_array_equal(volume[1:3, 2:9, 4:13], full[1:3, 2:9, 4:13])  # crop-independent
  for z in range(3):  # each slice: a relabelling of the 4-connected components
    np.testing.assert_array_equal(full[z] - (full[z] > 0) * np.uint64(z * 2**32),
                                  em_labels.membrane_to_instances(maps[z]))


def test_auto_converts_a_membrane_folder_and_leaves_instances_alone(tmp_path, caplog):
  folder = _write_folder(tmp_path / "membranes", _cells())
  with caplog.at_level(logging.WARNING, logger=em_labels.__name__):
    labels = em_labels.open_labels(folder)
  assert isinstance(labels, em_labels.MembraneInstanceVolume)
  assert len(np.unique(labels[0])) == 7  # 6 cells + membrane
  warned = [r.getMessage() for r in caplog.records]
  assert len(warned) == 1 and warned[0].startswith(f"{folder}: ") and "membrane map" in warned[0]
  np.testing.assert_array_equal(em_labels.open_labels(folder, "instances")[:], _cells())
  instances = _cells().astype(np.uint32) // 255 * np.arange(3 * 12 * 14).reshape(3, 12, 14) // 20
  tifffile.imwrite(tmp_path / "ids.tif", instances, photometric="minisblack")
  np.testing.assert_array_equal(em_labels.open_labels(tmp_path / "ids.tif")[:], instances)
  one_cell = np.zeros((3, 12, 14), np.uint8)
  one_cell[:, 2:9, 3:10] = 1  # {0, 1} but one component per slice: one instance, kept
  tifffile.imwrite(tmp_path / "one.tif", one_cell, photometric="minisblack")
  assert not isinstance(em_labels.open_labels(tmp_path / "one.tif"),
                        em_labels.MembraneInstanceVolume)
  flat = np.full((3, 12, 14), 255, np.uint8)
  tifffile.imwrite(tmp_path / "flat.tif", flat, photometric="minisblack")
  with pytest.raises(DataError, match=_names(tmp_path / "flat.tif", "single value 255")):
    em_labels.open_labels(tmp_path / "flat.tif", "membrane")
  with pytest.raises(ConfigError, match="valid choices: auto, instances, membrane"):
    em_labels.open_labels(folder, "cells")


# ---------------------------------------------------------------- several volumes as one


def test_concatenated_volume_reads_across_boundaries(tmp_path):
  a, b, c = _raw((3, 12, 14), 1), _raw((4, 12, 14), 2), _raw((2, 12, 14), 3).astype(np.uint16)
  tifffile.imwrite(tmp_path / "b.tif", b, photometric="minisblack")
  volume = ConcatenatedVolume([a, open_volume(tmp_path / "b.tif"), c])
  expected = np.concatenate([a, b, c]).astype(np.uint16)
  assert volume.shape == (9, 12, 14) and volume.dtype == np.uint16
  for key in [np.s_[:], np.s_[2:8, 3:9, 1:13], np.s_[3:7], np.s_[6, 4], np.s_[8:9], np.s_[4:4]]:
    np.testing.assert_array_equal(volume[key], expected[key])
  tifffile.imwrite(tmp_path / "wide.tif", _raw((3, 12, 15)), photometric="minisblack")
  with pytest.raises(DataError, match=_names(tmp_path / "wide.tif", r"in-plane shape \(12, 15\) "
                                             r"differs from \(12, 14\)")):
    ConcatenatedVolume([open_volume(tmp_path / "b.tif"), open_volume(tmp_path / "wide.tif")])


def test_file_source_joins_paths_and_reads_membrane_labels(tmp_path):
  first = _write_folder(tmp_path / "unlabeled", _raw((4, 12, 14), 1))
  second = _write_folder(tmp_path / "image", _raw((3, 12, 14), 2))
  labels = _write_folder(tmp_path / "label", _cells())
  joined = em_sources.open_source("file", em_sources.SourceSpec(path=f"{first}+{second}"))
  assert joined.labels is None
  np.testing.assert_array_equal(joined.raw[:], np.concatenate([_raw((4, 12, 14), 1),
                                                               _raw((3, 12, 14), 2)]))
  single = em_sources.open_source("file", em_sources.SourceSpec(path=str(second),
                                                                labels_path=str(labels)))
  assert single.labels.dtype == np.uint64 and len(np.unique(single.labels[1])) == 7
  kept = em_sources.SourceSpec(path=str(second), labels_path=str(labels), labels_kind="instances")
  np.testing.assert_array_equal(em_sources.open_source("file", kept).labels[:], _cells())
  with pytest.raises(DataError, match="labels_path is only allowed with a single volume path"):
    em_sources.open_source("file", em_sources.SourceSpec(path=f"{first}+{second}",
                                                         labels_path=str(labels)))
  _write_folder(tmp_path / "wide", _raw((2, 12, 15)))
  with pytest.raises(DataError, match=_names(tmp_path / "wide", "in-plane shape")):
    em_sources.open_source("file", em_sources.SourceSpec(path=f"{first}+{tmp_path / 'wide'}"))


# ---------------------------------------------------------------- real data


def test_real_isbi2012(shared_data):
  root = shared_data / "isbi2012"
  if not root.is_dir():
    pytest.skip(f"{root} is absent")
  labels = em_labels.open_labels(root / "train" / "label")
  assert isinstance(labels, em_labels.MembraneInstanceVolume) and labels.shape == (20, 512, 512)
  assert len(np.unique(labels[0])) - 1 > 50
  assert not set(np.unique(labels[0])) & set(np.unique(labels[19])) - {0}
  volume = em_sources.open_source("file", em_sources.SourceSpec(
      path=f"{root / 'train' / 'image'}+{root / 'unlabeled'}"))
  assert volume.raw.shape == (50, 512, 512) and volume.raw.dtype == np.uint8
