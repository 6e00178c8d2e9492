"""`neuroseg-jax segment` end to end on generated recordings, with the built-in model.

One simulated recording (128 x 128 px, 300 frames, with motion) is written as a
multipage TIFF, an HDF5 file and a folder of frame TIFFs; each is segmented and
the outputs are checked against the simulator's truth: masks (F1 floor), traces
of active cells (correlation with the true dF/F), the NWB file, the CSV and TIFF
formats. Bad inputs end in one line naming the file, with no output written.
"""

import csv
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from neuroseg_jax.commands import segment
from neuroseg_jax.data import twophoton_sim
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import neuron_matching

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, FRAMES = 128, 300


@pytest.fixture(scope="module")
def recording():
  config = twophoton_sim.SimulationConfig(height=SIZE, width=SIZE, frames=FRAMES)
  return twophoton_sim.simulate_recording(config, seed=0)


@pytest.fixture(scope="module")
def inputs(recording, tmp_path_factory):
  folder = tmp_path_factory.mktemp("inputs")
  movie = np.clip(recording.movie, 0, 65535).astype(np.uint16)
  tifffile.imwrite(folder / "rec_tif.tif", movie)
  with h5py.File(folder / "rec_h5.h5", "w") as f:
    f.create_dataset("mov", data=movie)
  frames = folder / "rec_frames"
  frames.mkdir()
  for t, frame in enumerate(movie):
    tifffile.imwrite(frames / f"frame{t:04d}.tif", frame)
  return folder


@pytest.fixture(scope="module")
def results(inputs, tmp_path_factory):
  out = tmp_path_factory.mktemp("out")
  paths = [inputs / "rec_tif.tif", inputs / "rec_h5.h5", inputs / "rec_frames"]
  found = segment.segment([str(p) for p in paths], str(out), write_nwb=True, progress=False)
  return out, found


def _label_masks(path):
  labels = tifffile.imread(path)
  return labels, np.stack([labels == i for i in np.unique(labels) if i])


def test_every_layout_finds_the_active_neurons(recording, results):
  out, found = results
  truth = recording.masks[recording.active]
  assert [r.name for r in found] == ["rec_tif", "rec_h5", "rec_frames"]
  for result in found:
    labels, masks = _label_masks(out / f"{result.name}_masks.tif")
    assert labels.dtype == np.uint16 and labels.shape == (SIZE, SIZE)
    assert len(masks) == result.neurons
    counts = neuron_matching.counts_from_iou(neuron_matching.mask_iou_matrix(masks, truth))
    assert counts.f1 > 0.8, (result.name, counts)
    for suffix in ("_rois.csv", "_overlay.png", "_summary.tif", "_traces.npz", "_traces.csv",
                   ".nwb"):
      assert os.path.isfile(out / f"{result.name}{suffix}")


def test_roi_table_matches_the_label_image(results):
  out, _ = results
  labels, _ = _label_masks(out / "rec_tif_masks.tif")
  with open(out / "rec_tif_rois.csv") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["id", "centroid_y", "centroid_x", "area", "score", "mean_intensity"]
  for row in rows:
    region = labels == int(row["id"])
    assert int(row["area"]) == region.sum()
    assert abs(float(row["centroid_y"]) - np.nonzero(region)[0].mean()) < 1e-3
    assert 0 < float(row["score"]) <= 1
  summary = tifffile.TiffFile(out / "rec_tif_summary.tif")
  assert summary.pages[0].description.split(",") == ["corr", "max", "mean", "robust_max", "std"]


def test_traces_follow_the_true_activity(recording, results):
  out, _ = results
  _, masks = _label_masks(out / "rec_tif_masks.tif")
  traces = np.load(out / "rec_tif_traces.npz")
  assert traces["dff"].shape == (len(masks), FRAMES)
  truth = recording.masks[recording.active]
  true_dff = recording.dff[recording.active]
  pairs = neuron_matching.match_pairs(neuron_matching.mask_iou_matrix(masks, truth))
  correlations = [np.corrcoef(traces["dff"][p], true_dff[t])[0, 1] for p, t in pairs]
  assert len(correlations) >= 0.8 * len(truth)
  assert np.mean(np.array(correlations) > 0.8) >= 0.8, np.round(correlations, 2)


def test_nwb_reads_back(results):
  pynwb = pytest.importorskip("pynwb")
  out, found = results
  with pynwb.NWBHDF5IO(str(out / "rec_h5.nwb"), "r") as io:
    nwbfile = io.read()
    ophys = nwbfile.processing["ophys"]
    dff = next(iter(ophys["DfOverF"].roi_response_series.values()))
    assert dff.data.shape == (FRAMES, found[1].neurons)
    planes = next(iter(ophys["ImageSegmentation"].plane_segmentations.values()))
    assert len(planes) == found[1].neurons


def test_summary_image_input_gives_masks_without_traces(results, inputs, tmp_path):
  out, _ = results
  corr = tifffile.imread(out / "rec_tif_summary.tif")[0]
  scaled = (255 * (corr - corr.min()) / (corr.max() - corr.min())).astype(np.uint8)
  Image.fromarray(scaled).save(tmp_path / "field.png")
  (result,) = segment.segment([str(tmp_path / "field.png")], str(tmp_path / "out"),
                              progress=False)
  assert result.neurons > 0
  assert sorted(os.listdir(tmp_path / "out")) == ["field_masks.tif", "field_overlay.png",
                                                  "field_rois.csv", "field_summary.tif"]


def _cli(*args):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "neuroseg_jax.cli", "segment", *map(str, args)],
                        env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_bad_inputs_are_one_line_and_write_nothing(inputs, tmp_path):
  cut = tmp_path / "cut.tif"
  data = (inputs / "rec_tif.tif").read_bytes()
  cut.write_bytes(data[:len(data) // 2])
  nan_movie = np.ones((20, 16, 16), np.float32)
  nan_movie[5, 3, 3] = np.nan
  tifffile.imwrite(tmp_path / "nan.tif", nan_movie)
  (tmp_path / "empty").mkdir()
  cases = [(tmp_path / "missing.tif", "no such file or folder"),
           (cut, "truncated or corrupt TIFF"),
           (tmp_path / "nan.tif", "non-finite values"),
           (tmp_path / "empty", "empty")]
  for path, problem in cases:
    out = tmp_path / f"out_{path.stem}"
    result = _cli(path, "--out", out)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}") and problem in last, last
    assert not out.exists() or not os.listdir(out)


def test_a_movie_is_not_a_summary_image(inputs):
  from neuroseg_jax.data import images  # pylint: disable=import-outside-toplevel
  with pytest.raises(DataError, match=r"rec_tif.tif: .*2-D.*neuroseg-jax segment"):
    images.read_summary_image(inputs / "rec_tif.tif")
