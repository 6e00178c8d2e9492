"""A segmentation result as one NWB file (Neurodata Without Borders, via pynwb).

Layout, all in the processing module "ophys":
  ImageSegmentation "ImageSegmentation" / PlaneSegmentation "PlaneSegmentation":
      one row per ROI (ROI i = id i + 1 of `roi_outputs`), its pixel_mask as
      (x = column, y = row, weight = 1.0) triples;
  Fluorescence "Fluorescence" / RoiResponseSeries "RoiResponseSeries": the
      neuropil-corrected traces, data [T, N] (NWB puts time first), unit "a.u.";
  DfOverF "DfOverF" / RoiResponseSeries "RoiResponseSeries": dF/F, [T, N],
      unit "dF/F"; both series start at 0 s and advance at `frame_rate`;
  Images "summary_images": one GrayscaleImage [H, W] per summary image.
The acquisition metadata NWB requires are placeholders, since a movie file does
not carry them: Device "microscope", OpticalChannel "green" (emission 510 nm),
ImagingPlane "imaging_plane" (excitation 920 nm, indicator and location
"unknown", imaging_rate = frame_rate); replace them when they are known.

The file is written atomically (`atomic_files.atomic_path`), as the other outputs.
"""

from __future__ import annotations

import datetime
import uuid

import numpy as np
import pynwb
from pynwb.base import Images
from pynwb.image import GrayscaleImage
from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation, OpticalChannel

from neuroseg_jax.data.atomic_files import atomic_path
from neuroseg_jax.data.traces import Traces, as_masks

EXCITATION_NM = 920.0  # typical two-photon excitation of GCaMP.
EMISSION_NM = 510.0  # GCaMP emission peak.


def _imaging_plane(nwbfile: pynwb.NWBFile, frame_rate: float):
  """Placeholder device, optical channel and imaging plane (module docstring)."""
  device = nwbfile.create_device(name="microscope", description="placeholder: not recorded")
  channel = OpticalChannel(name="green", description="placeholder: not recorded",
                           emission_lambda=EMISSION_NM)
  return nwbfile.create_imaging_plane(
      name="imaging_plane", optical_channel=channel, device=device,
      description="placeholder: not recorded", excitation_lambda=EXCITATION_NM,
      imaging_rate=float(frame_rate), indicator="unknown", location="unknown")


def write_nwb(path, masks, traces: Traces, summary_images: dict, frame_rate: float,
              session_description: str = "neuroseg-jax segmentation of a two-photon movie",
              identifier: str | None = None,
              session_start_time: datetime.datetime | None = None) -> None:
  """Writes ROIs (masks [N, H, W] or an [H, W] label image), their traces and the
  summary images {name: [H, W]} to an NWB file at `path`.

  `identifier` defaults to a random UUID and `session_start_time` to now (UTC).
  """
  masks = as_masks(masks)
  if traces.dff.shape[0] != len(masks):
    raise ValueError(f"{len(masks)} masks but traces of {traces.dff.shape[0]} ROIs")
  nwbfile = pynwb.NWBFile(
      session_description=session_description, identifier=identifier or str(uuid.uuid4()),
      session_start_time=session_start_time or datetime.datetime.now(datetime.timezone.utc))
  ophys = nwbfile.create_processing_module("ophys", "two-photon ROIs and their traces")
  segmentation = ImageSegmentation()
  ophys.add(segmentation)
  plane = segmentation.create_plane_segmentation(
      name="PlaneSegmentation", description="ROIs found by neuroseg-jax",
      imaging_plane=_imaging_plane(nwbfile, frame_rate))
  for mask in masks:
    rows, cols = np.nonzero(mask)
    plane.add_roi(pixel_mask=[(int(x), int(y), 1.0) for y, x in zip(rows, cols)])
  rois = plane.create_roi_table_region(description="all ROIs", region=list(range(len(masks))))
  for container, data, unit in ((Fluorescence(), traces.corrected, "a.u."),
                                (DfOverF(), traces.dff, "dF/F")):
    ophys.add(container)  # first, so the series and the ROI table share the file's tree.
    container.create_roi_response_series(name="RoiResponseSeries", data=data.T, rois=rois,
                                         unit=unit, rate=float(frame_rate))
  ophys.add(Images(name="summary_images", description="summary images of the movie",
                   images=[GrayscaleImage(name=name, data=np.asarray(image, np.float32))
                           for name, image in summary_images.items()]))
  with atomic_path(path) as temporary, pynwb.NWBHDF5IO(str(temporary), "w") as io:
    io.write(nwbfile)
