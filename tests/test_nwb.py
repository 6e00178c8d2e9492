"""NWB export: the file reads back with pynwb and holds what was written."""

import numpy as np
from pynwb import NWBHDF5IO

from neuroseg_jax.data.nwb import write_nwb
from neuroseg_jax.data.traces import extract_traces
from neuroseg_jax.data.twophoton_sim import SimulationConfig, simulate_recording


def test_nwb_round_trip(tmp_path):
  recording = simulate_recording(SimulationConfig(height=48, width=48, frames=40), seed=0)
  traces = extract_traces(recording.movie, recording.masks)
  summary = {"mean": recording.movie.mean(0), "max": recording.movie.max(0)}
  path = tmp_path / "result.nwb"
  write_nwb(path, recording.masks, traces, summary, frame_rate=30.0, identifier="test")
  num_rois, num_frames = traces.dff.shape
  with NWBHDF5IO(str(path), "r") as io:
    nwbfile = io.read()
    assert nwbfile.identifier == "test"
    ophys = nwbfile.processing["ophys"]
    plane = ophys["ImageSegmentation"]["PlaneSegmentation"]
    assert len(plane) == num_rois
    for i in (0, num_rois - 1):
      mask = np.zeros((48, 48), bool)
      for x, y, _ in plane["pixel_mask"][i]:
        mask[y, x] = True
      np.testing.assert_array_equal(mask, recording.masks[i])
    dff = ophys["DfOverF"]["RoiResponseSeries"]
    assert dff.data.shape == (num_frames, num_rois) and dff.rate == 30.0
    np.testing.assert_array_equal(dff.data[:], traces.dff.T)
    np.testing.assert_array_equal(ophys["Fluorescence"]["RoiResponseSeries"].data[:],
                                  traces.corrected.T)
    images = ophys["summary_images"]
    np.testing.assert_array_equal(images["mean"].data[:], summary["mean"])
    assert nwbfile.imaging_planes["imaging_plane"].imaging_rate == 30.0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["result.nwb"]
