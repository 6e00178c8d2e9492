"""The two streamed reads that take a movie [T, H, W] to summary images and traces.

1. `summarize(movie)`: rigid motion is estimated and corrected as each chunk is read
   (`motion.MotionCorrectedMovie`), and the corrected chunk goes straight into the
   summary images (`summary_images.compute_summary_images`); returns the summary
   images and the corrected movie to read again for traces (`ShiftedMovie` with the
   shifts of the first read, so the second read only copies pixels).
2. `traces.extract_traces(corrected, masks)` once the neurons are known.
Each read runs one chunk ahead in a background thread (`movies.stream_chunks`:
reading, motion estimation and shifting overlap the summary-image and trace
arithmetic, and each frame is shifted and converted to float32 in one copy, straight
into the buffer the arithmetic reads).
Frames are moved back by whole pixels by default (as Suite2p's rigid registration):
a copy, where bilinear interpolation costs ~0.4 ms a 487 x 487 frame and blends
neighbouring pixels' noise (`experiments/segment_motion_modes.py` compares them).
"""

from __future__ import annotations

from neuroseg_jax.data import motion
from neuroseg_jax.data import summary_images
from neuroseg_jax.data.movies import Movie, as_movie


def summarize(movie, correct_motion: bool = True,
              whole_pixels: bool = True) -> tuple[dict, Movie]:
  """Movie [T, H, W] -> ({name: [H, W] float32} summary images, the movie [T, H, W]
  to read traces from: motion-corrected unless `correct_motion` is False)."""
  movie = as_movie(movie)
  if not correct_motion:
    return summary_images.compute_summary_images(movie), movie
  corrected = motion.MotionCorrectedMovie(movie, whole_pixels=whole_pixels)
  summary = summary_images.compute_summary_images(corrected)
  return summary, motion.ShiftedMovie(movie, corrected.all_shifts(), whole_pixels)
