"""Label readers -> masks [N, H, W]: every format, the real abo275 files, bad input."""

import json

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.optimize
import scipy.sparse
import skimage.io
import tifffile

from neuroseg_jax.errors import DataError
from neuroseg_jax.data.labels import (instance_image_to_masks, load_masks,
                                      read_neurofinder)

ABO_ID = "501484643"


def write(path, text):
  path.write_text(text)
  return path


# ------------------------------------------------------------------ YOLO segments


def test_yolo_square_and_triangle_rasterise_to_hand_computed_pixels(tmp_path):
  path = write(tmp_path / "a.txt", "0 0.2 0.2 0.6 0.2 0.6 0.6 0.2 0.6\n\n0 0 0 0.4 0 0 0.4\n")
  masks = load_masks(path, (10, 10))
  rows, cols = np.mgrid[:10, :10]
  square = (rows >= 2) & (rows <= 6) & (cols >= 2) & (cols <= 6)  # vertices at pixel centres.
  np.testing.assert_array_equal(masks, np.stack([square, rows + cols <= 4]))


def test_yolo_x_is_column_and_y_is_row(tmp_path):
  path = write(tmp_path / "a.txt", "0 0.75 0.1 0.85 0.1 0.85 0.2 0.75 0.2")
  mask = load_masks(path, (10, 20))[0]  # H = 10 rows, W = 20 columns.
  pixels = np.argwhere(mask)
  assert pixels.min(0).tolist() == [1, 15] and pixels.max(0).tolist() == [2, 17]


@pytest.mark.parametrize("text, problem", [
    ("0 0.1 0.1 0.2 abc 0.3 0.3", "line 1: not a list of numbers"),
    ("0 0.1 0.1 0.2 0.2 0.3", "line 1: expected 'class x1 y1"),
    ("0 0.1 0.1 0.2 0.2\n", "line 1: expected 'class x1 y1"),
    ("0 0.1 0.1 0.2 0.2 0.3 0.3\n0 0.1 0.1 1.2 0.2 0.3 0.3", r"line 2: vertex outside the image"),
    ("0 -0.1 0.1 0.2 0.2 0.3 0.3", r"line 1: vertex outside the image"),
    ("\n  \n", "empty label file"),
])
def test_yolo_bad_input(tmp_path, text, problem):
  path = write(tmp_path / "bad.txt", text)
  with pytest.raises(DataError, match=rf"bad\.txt: {problem}"):
    load_masks(path, (8, 8))


def test_yolo_missing_file_and_missing_size(tmp_path):
  with pytest.raises(DataError, match=r"gone\.txt: file not found"):
    load_masks(tmp_path / "gone.txt", (8, 8))
  with pytest.raises(DataError, match=r"a\.txt: this label format needs the image size"):
    load_masks(write(tmp_path / "a.txt", "0 0 0 1 0 1 1"))


# ------------------------------------------------------------- FinalMasks .mat


@pytest.fixture
def matlab_array():
  """A MATLAB-side FinalMasks variable of size (a, b, n) and what it must read as."""
  masks = np.zeros((3, 6, 4), bool)  # expected (N, H, W)
  masks[0, 1:3, 0:2] = masks[1, 4, 3] = masks[2, 0:6, 1] = True
  return masks.T.astype(np.float64), masks  # MATLAB sees the transpose.


def test_mat_v73_and_old_mat_agree(tmp_path, matlab_array):
  matlab, expected = matlab_array
  scipy.io.savemat(tmp_path / "old.mat", {"FinalMasks": matlab})
  with h5py.File(tmp_path / "new.mat", "w") as f:
    f["FinalMasks"] = matlab.T  # an HDF5 (v7.3) writer stores the column-major bytes.
  np.testing.assert_array_equal(load_masks(tmp_path / "old.mat"), expected)
  np.testing.assert_array_equal(load_masks(tmp_path / "new.mat", (6, 4)), expected)


def test_single_cell_mat(tmp_path, matlab_array):
  matlab, expected = matlab_array
  scipy.io.savemat(tmp_path / "one.mat", {"FinalMasks": matlab[:, :, 0]})
  np.testing.assert_array_equal(load_masks(tmp_path / "one.mat"), expected[:1])


def test_mat_bad_input(tmp_path, matlab_array):
  matlab, _ = matlab_array
  with pytest.raises(DataError, match=r"gone\.mat: file not found"):
    load_masks(tmp_path / "gone.mat")
  scipy.io.savemat(tmp_path / "key.mat", {"Masks": matlab})
  with pytest.raises(DataError, match=r"key\.mat: no variable 'FinalMasks' \(found: Masks\)"):
    load_masks(tmp_path / "key.mat")
  (tmp_path / "junk.mat").write_bytes(b"not matlab at all" * 10)
  with pytest.raises(DataError, match=r"junk\.mat: not a readable MATLAB file"):
    load_masks(tmp_path / "junk.mat")
  scipy.io.savemat(tmp_path / "size.mat", {"FinalMasks": matlab})
  with pytest.raises(DataError, match=r"size\.mat: labels are 6x4 but the image is 6x5 "
                     r"\(labels outside the image\)"):
    load_masks(tmp_path / "size.mat", (6, 5))
  bad = matlab.copy()
  bad[0, 0, 0] = np.nan
  scipy.io.savemat(tmp_path / "nan.mat", {"FinalMasks": bad})
  with pytest.raises(DataError, match=r"nan\.mat: non-finite values"):
    load_masks(tmp_path / "nan.mat")
  with h5py.File(tmp_path / "empty.mat", "w") as f:
    f["FinalMasks"] = np.zeros((0, 6, 4))
  with pytest.raises(DataError, match=r"empty\.mat: no labeled instances"):
    load_masks(tmp_path / "empty.mat")


def _sparse_rows(masks):
  """[N, H, W] bool -> sparse [N, H * W] float32 indicator matrix."""
  pixels = masks.shape[1] * masks.shape[2]
  rows, cols = np.divmod(np.flatnonzero(masks), pixels)
  return scipy.sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                                 shape=(len(masks), pixels))


def _iou_matrix(a, b):
  """[Na, H, W] and [Nb, H, W] bool -> [Na, Nb] IoU."""
  sa, sb = _sparse_rows(a), _sparse_rows(b)
  inter = (sa @ sb.T).toarray()
  area_a, area_b = np.asarray(sa.sum(1)), np.asarray(sb.sum(1)).T
  return inter / (area_a + area_b - inter)


def test_real_mat_masks_line_up_with_yolo_polygons(shared_data):
  """STNeuroNet FinalMasks and the NeuroSeg-III polygons of the same experiment
  are the same cells in the same orientation; the transposed reading is not."""
  yolo = load_masks(shared_data / "abo275" / "labels" / f"{ABO_ID}_0.txt", (487, 487))
  mat_path = shared_data / "abo275" / "stneuronet_masks" / f"FinalMasks_FPremoved_{ABO_ID}.mat"
  mat = load_masks(mat_path, (487, 487))
  assert yolo.shape == (254, 487, 487) and mat.shape == (269, 487, 487)

  def matched_ious(b):
    iou = _iou_matrix(yolo, b)
    rows, cols = scipy.optimize.linear_sum_assignment(-iou)
    return iou[rows, cols]

  ious = matched_ious(mat)
  assert (ious >= 0.5).sum() >= 220
  assert np.median(ious[ious >= 0.5]) == pytest.approx(1.0)  # identical rasterisation.
  assert (matched_ious(mat.transpose(0, 2, 1)) >= 0.5).sum() < 30


# ------------------------------------------------------- instance-label images


def test_instance_image_tiff_and_png(tmp_path):
  labels = np.zeros((5, 6), np.uint16)
  labels[0:2, 0:2], labels[3:5, 2:6] = 7, 3
  tifffile.imwrite(tmp_path / "l.tif", labels)
  skimage.io.imsave(tmp_path / "l.png", labels.astype(np.uint8), check_contrast=False)
  for name in ("l.tif", "l.png"):
    masks = load_masks(tmp_path / name, (5, 6))
    np.testing.assert_array_equal(masks, np.stack([labels == 3, labels == 7]))


def test_instance_image_to_masks_one_mask_per_label():
  labels = np.array([[0, 4, 4], [9, 9, 0], [9, 9, 0]])
  masks = instance_image_to_masks(labels)
  np.testing.assert_array_equal(masks, np.stack([labels == 4, labels == 9]))


def test_instance_image_bad_input(tmp_path):
  tifffile.imwrite(tmp_path / "3d.tif", np.ones((2, 3, 4), np.uint16))
  with pytest.raises(DataError, match=r"3d\.tif: expected a 2-D instance-label image"):
    load_masks(tmp_path / "3d.tif")
  tifffile.imwrite(tmp_path / "zero.tif", np.zeros((3, 4), np.uint16))
  with pytest.raises(DataError, match=r"zero\.tif: no labeled instances"):
    load_masks(tmp_path / "zero.tif")
  tifffile.imwrite(tmp_path / "frac.tif", np.full((3, 4), 0.5, np.float32))
  with pytest.raises(DataError, match=r"frac\.tif: unsupported dtype float32 with non-integer"):
    load_masks(tmp_path / "frac.tif")
  tifffile.imwrite(tmp_path / "neg.tif", np.full((3, 4), -2, np.int16))
  with pytest.raises(DataError, match=r"neg\.tif: negative label -2"):
    load_masks(tmp_path / "neg.tif")
  tifffile.imwrite(tmp_path / "ok.tif", np.ones((3, 4), np.uint8))
  with pytest.raises(DataError, match=r"ok\.tif: labels are 3x4 but the image is 4x4"):
    load_masks(tmp_path / "ok.tif", (4, 4))


# ------------------------------------------------------------------ Neurofinder


def write_neurofinder(folder, frames, regions):
  (folder / "images").mkdir(parents=True)
  (folder / "regions").mkdir()
  for t, frame in enumerate(frames):
    tifffile.imwrite(folder / "images" / f"image{t:05d}.tiff", frame)
  (folder / "regions" / "regions.json").write_text(json.dumps(regions))
  return folder


def test_neurofinder_folder(tmp_path):
  frames = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
  regions = [{"id": 0, "coordinates": [[0, 1], [0, 2], [1, 1]]}, {"coordinates": [[3, 4]]}]
  movie, masks = read_neurofinder(write_neurofinder(tmp_path / "nf", frames, regions))
  np.testing.assert_array_equal(movie[:], frames)
  expected = np.zeros((2, 4, 5), bool)
  expected[0, [0, 0, 1], [1, 2, 1]] = expected[1, 3, 4] = True  # [row, col].
  np.testing.assert_array_equal(masks, expected)


@pytest.mark.parametrize("content, problem", [
    ([{"coordinates": [[0, 0], [4, 1]]}], r"region 0: coordinates outside the 4x5 image"),
    ([{"coordinates": [[0, 0]]}, {"coordinates": [[1, -1]]}], r"region 1: coordinates outside"),
    ([{"pixels": [[0, 0]]}], r"region 0: expected 'coordinates'"),
    ([{"coordinates": []}], r"region 0 has no coordinates"),
    ([], r"expected a non-empty list of regions"),
])
def test_neurofinder_bad_regions(tmp_path, content, problem):
  path = write(tmp_path / "regions.json", json.dumps(content))
  with pytest.raises(DataError, match=rf"regions\.json: {problem}"):
    load_masks(path, (4, 5))


def test_neurofinder_bad_json_and_missing_folder(tmp_path):
  with pytest.raises(DataError, match=r"regions\.json: not valid JSON"):
    load_masks(write(tmp_path / "regions.json", "[{"), (4, 5))
  with pytest.raises(DataError, match=r"nothing/images: file not found"):
    read_neurofinder(tmp_path / "nothing")


def test_unknown_label_format(tmp_path):
  with pytest.raises(DataError, match=r"l\.csv: unknown label format '\.csv'"):
    load_masks(write(tmp_path / "l.csv", "1,2"), (4, 4))
