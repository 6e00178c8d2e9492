"""Broken input files fail loudly: each kind of damage is a DataError naming the file and the
problem (truncated TIFF / JPEG / PNG / HDF5, NaN frames, bad YOLO lines, slice folders with
gaps or mismatched sizes, misaligned labels); the opt-in reading of a cut TIFF keeps exactly
the complete frames and warns."""

import re

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from neuroseg_jax.data import em_sources
from neuroseg_jax.data.em_volumes import open_mitoem, open_snemi3d, open_volume
from neuroseg_jax.data.images import read_summary_image
from neuroseg_jax.data.labels import load_masks
from neuroseg_jax.data.movies import open_movie
from neuroseg_jax.data.summary_images import compute_summary_images
from neuroseg_jax.errors import DataError

FRAMES = np.random.default_rng(0).integers(0, 4000, size=(20, 16, 24)).astype(np.uint16)
CUTS = (0.10, 0.50, 0.95, 0.99)
TIFF_KINDS = {  # how each kind is written
    "plain": {},                    # tifffile "shaped" metadata, one contiguous block
    "imagej": {"imagej": True},     # ImageJ hyperstack metadata ("images=20")
    "zlib": {"compression": "zlib"},  # compressed pages, read page by page
}


def _cut(path, fraction, name=None):
  """Writes the first `fraction` of `path`'s bytes to a sibling file; returns its path."""
  data = path.read_bytes()
  cut = path.with_name(name or f"cut{int(fraction * 100)}_{path.name}")
  cut.write_bytes(data[:int(len(data) * fraction)])
  return cut


def _tiff(tmp_path, kind):
  path = tmp_path / f"{kind}.tif"
  tifffile.imwrite(path, FRAMES, **TIFF_KINDS[kind])
  return path


def _complete_frames(path, size: int) -> int:
  """Leading frames of the intact TIFF `path` whose pixel bytes all lie in its first `size`
  bytes (computed from the intact file's page table, independently of the reader)."""
  with tifffile.TiffFile(path) as tiff:
    ends = [max(o + n for o, n in zip(p.dataoffsets, p.databytecounts)) for p in tiff.pages]
  return next((i for i, end in enumerate(ends) if end > size), len(ends))


def _names(path, *problems):
  """A regex matching a message that names `path` and then each of `problems` in order."""
  return re.escape(str(path)) + ": .*" + ".*".join(problems)


# ------------------------------------------------------------- truncated TIFF


@pytest.mark.parametrize("kind", sorted(TIFF_KINDS))
@pytest.mark.parametrize("fraction", CUTS)
def test_truncated_tiff_movie_is_a_data_error(tmp_path, kind, fraction):
  intact = _tiff(tmp_path, kind)
  assert open_movie(intact).shape == FRAMES.shape  # the intact file reads cleanly
  cut = _cut(intact, fraction)
  with pytest.raises(DataError, match=_names(cut, "truncated or corrupt TIFF: ", r"\d+ of the "
                                             r"\d+ frames it promises are complete")):
    open_movie(cut)


def test_truncated_tiff_volume_is_a_data_error(tmp_path):
  cut = _cut(_tiff(tmp_path, "zlib"), 0.5)
  with pytest.raises(DataError, match=_names(cut, "truncated or corrupt TIFF: 9 of the 20 frames")):
    open_volume(cut)


@pytest.mark.parametrize("kind", sorted(TIFF_KINDS))
@pytest.mark.parametrize("fraction", (0.50, 0.95, 0.99))
def test_allow_truncated_reads_exactly_the_complete_frames(tmp_path, kind, fraction):
  intact = _tiff(tmp_path, kind)
  cut = _cut(intact, fraction)
  expected = _complete_frames(intact, cut.stat().st_size)
  assert 0 < expected <= 20
  with pytest.warns(UserWarning, match=_names(cut, "truncated or corrupt TIFF: "
                                              f"{expected} of the ", f"read the first {expected} "
                                              r"frames \(allow_truncated\)")):
    movie = open_movie(cut, allow_truncated=True)
  assert movie.shape == (expected, 16, 24)
  np.testing.assert_array_equal(movie[:], FRAMES[:expected])


def test_allow_truncated_still_refuses_a_file_without_a_complete_frame(tmp_path):
  cut = _cut(_tiff(tmp_path, "plain"), 0.02)  # the header and first IFD, no pixels
  with pytest.raises(DataError, match=_names(cut, "0 of the 20 frames")):
    open_movie(cut, allow_truncated=True)


def test_truncated_real_movie(tmp_path, shared_data):
  real = shared_data / "sima_movie" / "example.tif"
  cut = tmp_path / "example.tif"
  cut.write_bytes(real.read_bytes()[:real.stat().st_size // 2])
  with pytest.raises(DataError, match=_names(cut, "truncated or corrupt TIFF")):
    open_movie(cut)
  expected = _complete_frames(real, cut.stat().st_size)
  with pytest.warns(UserWarning, match=_names(cut, f"read the first {expected} frames")):
    movie = open_movie(cut, allow_truncated=True)
  assert 0 < expected < 20
  np.testing.assert_array_equal(movie[:], tifffile.imread(real)[:expected])


# ------------------------------------------------------------- truncated JPEG / PNG


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("fraction", (0.3, 0.9))
def test_truncated_summary_image(tmp_path, suffix, fraction):
  image = np.random.default_rng(1).integers(0, 255, size=(40, 48)).astype(np.uint8)
  Image.fromarray(image).save(tmp_path / f"i{suffix}")
  cut = _cut(tmp_path / f"i{suffix}", fraction)
  with pytest.raises(DataError, match=_names(cut, "not a readable image file", "truncated")):
    read_summary_image(cut)


def test_truncated_png_slice_in_a_volume_folder(tmp_path):
  folder = tmp_path / "slices"
  folder.mkdir()
  slices = np.random.default_rng(4).integers(0, 255, size=(3, 32, 40)).astype(np.uint8)
  for z, image in enumerate(slices):
    Image.fromarray(image).save(folder / f"im{z}.png")
  _cut(folder / "im1.png", 0.5, "im1.png")  # overwrites slice 1 with its first half
  volume = open_volume(folder, check_constant=False)  # headers are intact ...
  with pytest.raises(DataError, match=_names(folder / "im1.png", "truncated")):
    volume[0:2]  # ... the pixels are not.


def test_pil_load_truncated_images_switch_is_refused(tmp_path, monkeypatch):
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "i.png")
  monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
  with pytest.raises(DataError, match=_names(tmp_path / "i.png", "LOAD_TRUNCATED_IMAGES is set")):
    read_summary_image(tmp_path / "i.png")


# ------------------------------------------------------------- HDF5 and non-finite frames


def test_truncated_hdf5_movie_and_volume(tmp_path):
  with h5py.File(tmp_path / "m.h5", "w") as f:
    f["mov"] = FRAMES
  cut = _cut(tmp_path / "m.h5", 0.5)
  with pytest.raises(DataError, match=_names(cut, "not a readable HDF5 file")):
    open_movie(cut)
  with pytest.raises(DataError, match=_names(cut, "not a readable HDF5 file")):
    open_volume(cut)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_frame_is_named_by_summary_images(tmp_path, bad):
  movie = FRAMES.astype(np.float32)
  movie[13, 4, 5] = bad
  tifffile.imwrite(tmp_path / "m.tif", movie)
  with pytest.raises(DataError, match=_names(tmp_path / "m.tif", r"non-finite values \(NaN or "
                                             r"inf\) in frame 13$")):
    compute_summary_images(open_movie(tmp_path / "m.tif"), chunk_size=10, window=5)


# ------------------------------------------------------------- YOLO label lines


@pytest.mark.parametrize("line, problem", [
    ("0 0.1 0.1 0.2 0.2 0.3", "expected 'class x1 y1 .* got 5 coordinates"),   # odd count
    ("0 0.1 0.1 0.2 0.2", "expected 'class x1 y1 .* got 4 coordinates"),        # 2 vertices
    ("0 0.1 0.1 0.2 zero 0.3 0.3", "not a list of numbers"),                     # a word
    ("0 0.1 0.1 0.2 nan 0.3 0.3", "not a list of finite numbers \\('nan'\\)"),
    ("0 0.1 0.1 0.2 inf 0.3 0.3", "not a list of finite numbers \\('inf'\\)"),
    ("0 0.1 0.1 1.01 0.2 0.3 0.3", r"vertex outside the image .* got 0.1..1.01"),
    ("0 0.1 -0.01 0.2 0.2 0.3 0.3", r"vertex outside the image .* got -0.01..0.3"),
    ("-1 0.1 0.1 0.2 0.2 0.3 0.3", "class '-1' is not a non-negative integer"),
    ("0.5 0.1 0.1 0.2 0.2 0.3 0.3", "class '0.5' is not a non-negative integer"),
])
def test_each_yolo_breakage_names_file_and_line(tmp_path, line, problem):
  path = tmp_path / "labels.txt"
  path.write_text(f"0 0.1 0.1 0.5 0.1 0.5 0.5\n\n{line}\n")  # the bad polygon is on line 3
  with pytest.raises(DataError, match=_names(path, f"line 3: {problem}")):
    load_masks(path, (16, 16))


def test_yolo_rounding_beyond_unit_interval_is_tolerated(tmp_path):
  path = tmp_path / "labels.txt"
  path.write_text("0 0 0 1.0000001 0 1.0000001 1.0000001\n")
  assert load_masks(path, (4, 4)).shape == (1, 4, 4)


# ------------------------------------------------------------- slice folders


def _frame_folder(folder, numbers, shapes=None):
  folder.mkdir()
  for i, number in enumerate(numbers):
    shape = shapes[i] if shapes else (5, 6)
    tifffile.imwrite(folder / f"frame_{number}.tif", np.full(shape, number + 1, np.uint16))
  return folder


def test_folder_with_a_missing_slice_number(tmp_path):
  folder = _frame_folder(tmp_path / "frames", [0, 1, 3, 4])
  problem = "slice number 3 follows 1: slice 2 is missing"
  with pytest.raises(DataError, match=_names(folder / "frame_3.tif", problem)):
    open_movie(folder)
  with pytest.raises(DataError, match=_names(folder / "frame_3.tif", problem)):
    open_volume(folder)


def test_folder_with_slices_of_different_sizes(tmp_path):
  folder = _frame_folder(tmp_path / "frames", range(4), [(5, 6)] * 3 + [(5, 7)])
  with pytest.raises(DataError, match=_names(folder / "frame_3.tif", r"image is \(5, 7\), but "
                                             r"the first slice frame_0.tif is \(5, 6\)")):
    open_volume(folder)


def test_folder_with_a_number_twice_or_two_name_series(tmp_path):
  folder = _frame_folder(tmp_path / "twice", [0, 1, 2])
  tifffile.imwrite(folder / "frame_01.tif", np.ones((5, 6), np.uint16))
  with pytest.raises(DataError, match=_names(folder / "frame_1.tif", "slice number 1 appears "
                                             r"twice \(also frame_01.tif\)")):
    open_movie(folder)
  folder = _frame_folder(tmp_path / "mixed", [0, 1, 2])
  tifffile.imwrite(folder / "other_3.tif", np.ones((5, 6), np.uint16))
  with pytest.raises(DataError, match=_names(folder / "other_3.tif", "does not follow "
                                             "frame_0.tif")):
    open_movie(folder)


def test_mitoem_label_folder_with_a_gap(tmp_path):
  raw = np.random.default_rng(2).integers(0, 255, size=(4, 8, 10)).astype(np.uint8)
  (tmp_path / "im").mkdir()
  (tmp_path / "mito-train-v2").mkdir()
  for z in range(4):
    Image.fromarray(raw[z]).save(tmp_path / "im" / f"im{z:04d}.png")
  for z in (0, 1, 3):
    tifffile.imwrite(tmp_path / "mito-train-v2" / f"seg{z:04d}.tif", np.ones((8, 10), np.uint32))
  with pytest.raises(DataError, match=_names(tmp_path / "mito-train-v2" / "seg0003.tif",
                                             "slice 2 is missing")):
    open_mitoem(tmp_path, "train")


# ------------------------------------------------------------- labels vs images


def test_em_labels_must_match_the_raw_volume(tmp_path):
  raw = np.random.default_rng(3).integers(0, 255, size=(6, 12, 14)).astype(np.uint8)
  tifffile.imwrite(tmp_path / "train-input.tif", raw)
  tifffile.imwrite(tmp_path / "train-labels.tif", np.ones((6, 12, 13), np.uint32))
  problem = r"label shape \(6, 12, 13\) differs from raw shape \(6, 12, 14\)"
  with pytest.raises(DataError, match=_names(tmp_path / "train-labels.tif", problem)):
    open_snemi3d(tmp_path)
  spec = em_sources.SourceSpec(path=str(tmp_path / "train-input.tif"),
                               labels_path=str(tmp_path / "train-labels.tif"))
  with pytest.raises(DataError, match=_names(tmp_path / "train-labels.tif", problem)):
    em_sources.open_source("file", spec)
