"""Label image, ROI table and trace files of a segmentation result."""

import csv

import numpy as np
import pytest
import tifffile

from neuroseg_jax.data import roi_outputs
from neuroseg_jax.data.atomic_files import atomic_write
from neuroseg_jax.data.traces import Traces


@pytest.fixture
def masks():
  """Two overlapping squares on a 12x10 image, and a third apart."""
  masks = np.zeros((3, 12, 10), bool)
  masks[0, 1:5, 1:5] = True
  masks[1, 3:7, 3:7] = True  # shares [3:5, 3:5] with ROI 0.
  masks[2, 9:11, 7:9] = True
  return masks


@pytest.mark.parametrize("scores, overlap_id", [([0.9, 0.5, 0.7], 1), ([0.2, 0.6, 0.7], 2)])
def test_label_image_gives_overlap_to_higher_score(tmp_path, masks, scores, overlap_id):
  labels = roi_outputs.write_label_image(tmp_path / "labels.tif", masks, scores)
  read = tifffile.imread(tmp_path / "labels.tif")
  assert read.dtype == np.uint16 and read.shape == (12, 10)
  np.testing.assert_array_equal(read, labels)
  assert (read[3:5, 3:5] == overlap_id).all()
  assert set(np.unique(read)) == {0, 1, 2, 3}
  for i, mask in enumerate(masks):  # every ROI keeps its unshared pixels.
    unshared = mask & (masks.sum(0) == 1)
    assert (read[unshared] == i + 1).all()
  assert (read[masks.sum(0) == 0] == 0).all()


def test_roi_table_columns_and_types(tmp_path, masks):
  roi_outputs.write_roi_table(tmp_path / "rois.csv", masks, [0.9, 0.5, 0.7], [10.0, 20.5, 3.25])
  with open(tmp_path / "rois.csv") as file:
    rows = list(csv.DictReader(file))
  assert list(rows[0]) == ["id", "centroid_y", "centroid_x", "area", "score", "mean_intensity"]
  assert [int(r["id"]) for r in rows] == [1, 2, 3]
  assert [int(r["area"]) for r in rows] == [16, 16, 4]
  assert (float(rows[1]["centroid_y"]), float(rows[1]["centroid_x"])) == (4.5, 4.5)
  assert [float(r["score"]) for r in rows] == [0.9, 0.5, 0.7]
  assert float(rows[2]["mean_intensity"]) == 3.25


def test_traces_npz_and_wide_csv(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {name: rng.normal(size=(3, 7)).astype(np.float32)
            for name in ("raw", "neuropil", "corrected", "baseline", "dff")}
  traces = Traces(**arrays, mean_intensity=np.ones(3, np.float32), neuropil_coefficient=0.7)
  npz_path, csv_path = roi_outputs.write_traces(tmp_path / "movie", traces, frame_rate=30.0)
  assert (npz_path.name, csv_path.name) == ("movie_traces.npz", "movie_traces.csv")
  with np.load(npz_path) as saved:
    for name, array in arrays.items():
      np.testing.assert_array_equal(saved[name], array)
    assert float(saved["neuropil_coefficient"]) == pytest.approx(0.7)
  table = np.loadtxt(csv_path, delimiter=",", skiprows=1)
  with open(csv_path) as file:
    assert file.readline().strip() == "frame,time_s,roi1_dff,roi2_dff,roi3_dff"
  np.testing.assert_array_equal(table[:, 0], np.arange(7))
  np.testing.assert_allclose(table[:, 1], np.arange(7) / 30.0, atol=1e-6)
  np.testing.assert_allclose(table[:, 2:], arrays["dff"].T, rtol=1e-5)
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
  path = tmp_path / "result.csv"
  path.write_text("old\n")
  with pytest.raises(RuntimeError):
    with atomic_write(path, "w") as file:
      file.write("half")
      raise RuntimeError("crash mid-write")
  assert path.read_text() == "old\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["result.csv"]


def test_score_count_must_match(tmp_path, masks):
  with pytest.raises(ValueError, match="3 masks but 2 scores"):
    roi_outputs.write_label_image(tmp_path / "labels.tif", masks, [1.0, 2.0])
  assert not (tmp_path / "labels.tif").exists()
