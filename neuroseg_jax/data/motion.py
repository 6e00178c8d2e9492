"""Rigid motion correction of a movie [T, H, W] by phase correlation, streamed.

`estimate_shifts` returns one (dy, dx) per frame ([T, 2] float32, pixels): the
displacement of the frame's content relative to the reference image, in the
convention of `scipy.ndimage.shift` and of the simulator's `Recording.shifts`:
frame[y, x] ~= reference[y - dy, x - dx]. `ShiftedMovie(movie, shifts)` is a lazy
Movie whose frames are shifted back on read (out[y, x] = frame[y + dy, x + dx],
bilinear, edges repeated), so summary images and trace extraction read a corrected
movie chunk by chunk and memory stays bounded by one chunk, whatever T is.
`MotionCorrectedMovie(movie)` estimates and corrects in the same read, chunk by
chunk, so a first pass (summary images) needs no separate estimation pass.

Estimation, per chunk of frames, in NumPy (scipy.fft, float32, one thread: the
other core does the summary-image arithmetic meanwhile; faster than jnp.fft on a
2-core CPU for these sizes):
  * the central `max_size` x `max_size` window of each frame (all of it if smaller)
    is averaged over `binning` x `binning` blocks, mean-subtracted and tapered at its
    edges (so the circular FFT sees no edge jump). A 256-pixel window binned by 2 (a
    128 x 128 FFT, ~0.2 ms a frame) still holds ~80 ABO-sized somata and keeps the
    FFT from dominating the movie-to-traces time;
  * the cross-power spectrum with the reference is whitened (phase correlation)
    and low-passed by a Gaussian of sigma 1 binned pixel (as Suite2p's smooth_sigma),
    which makes the correlation peak smooth enough for a sub-pixel fit;
  * the peak is searched within +-max_shift pixels and refined by a parabola
    through it and its two neighbours along each axis.
Accuracy is ~0.1 binned pixel on somata-rich frames (so ~0.2 px at binning 2).

The default reference is the mean of the first `reference_frames` frames,
refined once: those frames are aligned to their mean and averaged again, which
sharpens a reference blurred by motion.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from neuroseg_jax.data.movies import Movie, as_movie
from neuroseg_jax.errors import DataError

DEFAULT_CHUNK_SIZE = 50  # frames per read and batched FFT; 200 measured slower (bigger buffers).
_TAPER_FRACTION = 0.125  # of the FFT window, at each edge.
_SMOOTH_SIGMA = 1.0  # binned pixels, Gaussian low-pass of the phase correlation.


def _pad_edges(frame: np.ndarray, pad: int, padded: np.ndarray) -> None:
  """Writes `frame` [H, W] into `padded` [H + 2 pad, W + 2 pad], edge pixels repeated."""
  padded[pad:-pad, pad:-pad] = frame
  padded[:pad, pad:-pad] = frame[:1]
  padded[-pad:, pad:-pad] = frame[-1:]
  padded[:, :pad] = padded[:, pad:pad + 1]
  padded[:, -pad:] = padded[:, -pad - 1:-pad]


def _shift_whole(frame: np.ndarray, dy: int, dx: int, out: np.ndarray) -> None:
  """out[y, x] = frame[clip(y + dy), clip(x + dx)] for whole-pixel dy, dx: a copy."""
  height, width = frame.shape
  r0, r1 = np.clip([-dy, height - dy], 0, height)
  c0, c1 = np.clip([-dx, width - dx], 0, width)
  if r0 >= r1 or c0 >= c1:  # displaced by a whole frame or more: every pixel is an edge pixel
    out[...] = frame[np.clip(np.arange(height) + dy, 0, height - 1)[:, None],
                     np.clip(np.arange(width) + dx, 0, width - 1)]
    return
  source = frame[r0 + dy:r1 + dy]
  out[r0:r1, c0:c1] = source[:, c0 + dx:c1 + dx]
  out[r0:r1, :c0] = source[:, :1]
  out[r0:r1, c1:] = source[:, -1:]
  out[:r0] = out[r0]
  out[r1:] = out[r1 - 1]


def shift_frames(frames: np.ndarray, shifts: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
  """Frames [n, H, W] (any real dtype) displaced by shifts [n, 2] (dy, dx) -> [n, H, W]
  float32 moved back: out[i, y, x] = frames[i, y + dy_i, x + dx_i], bilinear, the
  edge pixels repeated outside the frame. Written into `out` (float32, any strides)
  when given. Whole-pixel shifts copy pixels, converting the dtype in the same copy
  (~0.1 ms a 487 x 487 uint16 frame).

  One frame at a time through reused buffers, the arithmetic in place: ~0.5 ms a
  487 x 487 frame, ~30% less than padding the whole chunk and using temporaries.
  """
  shifts = np.asarray(shifts, np.float64)
  whole = np.floor(shifts).astype(int)
  fractions = (shifts - whole).astype(np.float32)
  height, width = frames.shape[1:]
  pad = int(np.abs(whole).max(initial=0)) + 1
  padded = np.empty((height + 2 * pad, width + 2 * pad), np.float32)
  rows = np.empty((height, width + 1), np.float32)  # interpolated along y.
  out = np.empty(frames.shape, np.float32) if out is None else out
  for frame, (y0, x0), (fy, fx), moved in zip(frames, whole, fractions, out):
    if fy == 0 and fx == 0:
      _shift_whole(frame, y0, x0, moved)
      continue
    _pad_edges(frame, pad, padded)
    view = padded[pad + y0:pad + y0 + height + 1, pad + x0:pad + x0 + width + 1]
    np.subtract(view[1:], view[:-1], out=rows)
    rows *= fy
    rows += view[:-1]
    np.subtract(rows[:, 1:], rows[:, :-1], out=moved)
    moved *= fx
    moved += rows[:, :-1]
  return out


def _edge_taper(size: int) -> np.ndarray:
  """[size] weights rising as sin^2 from ~0 to 1 over the outer _TAPER_FRACTION."""
  ramp = max(1.0, _TAPER_FRACTION * size)
  distance = np.minimum(np.arange(size), np.arange(size)[::-1]) + 0.5
  return (np.sin(0.5 * np.pi * np.minimum(distance / ramp, 1.0)) ** 2).astype(np.float32)


class _PhaseCorrelator:
  """Phase correlation of frames against one reference [H, W], in a binned window."""

  def __init__(self, source: str, reference: np.ndarray, max_size: int, binning: int,
               max_shift: float):
    height, width = reference.shape
    self.binning = binning
    size = [min(n, max_size) // binning * binning for n in (height, width)]
    if min(size) < 8 * binning:
      raise DataError(source, f"frames of {height}x{width} are too small for motion "
                      f"estimation binned by {binning} (at least {8 * binning} px a side)")
    self.rows, self.cols = (slice((n - s) // 2, (n - s) // 2 + s)
                            for n, s in zip((height, width), size))
    self.shape = (size[0] // binning, size[1] // binning)
    self.taper = np.outer(*(_edge_taper(n) for n in self.shape))
    ky = scipy.fft.fftfreq(self.shape[0])[:, None]
    kx = scipy.fft.rfftfreq(self.shape[1])[None, :]
    lowpass = np.exp(-2 * (np.pi * _SMOOTH_SIGMA) ** 2 * (ky ** 2 + kx ** 2))
    self.filter = (lowpass * np.conj(self._spectrum(reference[None])[0])).astype(np.complex64)
    # The search reaches one pixel beyond max_shift so the peak keeps both neighbours.
    reach = int(min(np.ceil(max_shift / binning), min(self.shape) // 2 - 2)) + 1
    self.offsets = np.arange(-reach, reach + 1)

  def _spectrum(self, frames: np.ndarray) -> np.ndarray:
    """[n, H, W] (any real dtype) -> [n, h, w // 2 + 1] complex64 rfft of the
    binned, tapered window."""
    window, b = frames[:, self.rows, self.cols], self.binning
    rows = window[:, 0::b].astype(np.float32)  # rows, then columns: ~2x faster than
    for dy in range(1, b):                      # b * b strided adds of single pixels.
      rows += window[:, dy::b]
    binned = rows[:, :, 0::b].copy()
    for dx in range(1, b):
      binned += rows[:, :, dx::b]
    binned -= binned.mean(axis=(1, 2), keepdims=True)  # the scale does not matter.
    binned *= self.taper
    return scipy.fft.rfft2(binned, overwrite_x=True)

  def shifts(self, frames: np.ndarray) -> np.ndarray:
    """[n, H, W] -> [n, 2] float32 displacements (dy, dx) in full-resolution pixels."""
    cross = self._spectrum(frames)
    cross *= self.filter
    scale = np.abs(cross)  # whitening: each frequency divided by its magnitude,
    scale += 1e-12         # as real factors on the (re, im) pairs (a complex
    np.reciprocal(scale, out=scale)  # division costs ~3x more).
    cross.view(np.float32).reshape(*cross.shape, 2)[...] *= scale[..., None]
    corr = scipy.fft.irfft2(cross, s=self.shape, overwrite_x=True)
    ys, xs = (self.offsets % n for n in self.shape)
    near = corr[:, ys][:, :, xs]  # [n, 2r + 1, 2r + 1], offset 0 at the centre.
    inner = near[:, 1:-1, 1:-1].reshape(len(near), -1)
    iy, ix = np.unravel_index(np.argmax(inner, axis=1), near[0, 1:-1, 1:-1].shape)
    iy, ix, frame = iy + 1, ix + 1, np.arange(len(near))
    peak = near[frame, iy, ix]
    refined = [_parabola_offset(near[frame, iy - 1, ix], peak, near[frame, iy + 1, ix]),
               _parabola_offset(near[frame, iy, ix - 1], peak, near[frame, iy, ix + 1])]
    offsets = np.stack([self.offsets[iy], self.offsets[ix]], axis=1) + np.stack(refined, axis=1)
    return (offsets * self.binning).astype(np.float32)


def _parabola_offset(before: np.ndarray, peak: np.ndarray, after: np.ndarray) -> np.ndarray:
  """Vertex of the parabola through (-1, before), (0, peak), (1, after), in [-0.5, 0.5]."""
  curvature = before - 2 * peak + after
  safe = np.where(curvature < 0, curvature, -1.0)
  return np.where(curvature < 0, np.clip(0.5 * (before - after) / safe, -0.5, 0.5), 0.0)


def _default_reference(movie: Movie, num_frames: int, correlator_args: dict) -> np.ndarray:
  """Mean of the first frames, aligned once to their own mean and averaged again
  (chunk by chunk through one reused buffer)."""
  starts = range(0, min(num_frames, len(movie)), DEFAULT_CHUNK_SIZE)
  stops = [min(start + DEFAULT_CHUNK_SIZE, num_frames, len(movie)) for start in starts]
  total = sum(movie.read_native(a, b).sum(axis=0, dtype=np.float64) for a, b in zip(starts, stops))
  correlator = _PhaseCorrelator(movie.source, (total / stops[-1]).astype(np.float32),
                                **correlator_args)
  buffer = np.empty((DEFAULT_CHUNK_SIZE, *movie.shape[1:]), np.float32)
  aligned = np.zeros(movie.shape[1:], np.float64)
  for start, stop in zip(starts, stops):
    frames = movie.read_native(start, stop)
    aligned += shift_frames(frames, correlator.shifts(frames), buffer[:stop - start]).sum(axis=0)
  return (aligned / stops[-1]).astype(np.float32)


def _correlator(movie: Movie, reference: np.ndarray | None, reference_frames: int,
                max_shift: float, max_size: int, binning: int) -> _PhaseCorrelator:
  """The phase correlator of `movie` against `reference` (None: the default one)."""
  correlator_args = dict(max_size=max_size, binning=binning, max_shift=max_shift)
  if reference is None:
    reference = _default_reference(movie, reference_frames, correlator_args)
  reference = np.asarray(reference, np.float32)
  if reference.shape != movie.shape[1:]:
    raise DataError(movie.source, f"reference image is {reference.shape}, frames are "
                    f"{movie.shape[1:]}")
  return _PhaseCorrelator(movie.source, reference, **correlator_args)


def estimate_shifts(movie, reference: np.ndarray | None = None,
                    chunk_size: int = DEFAULT_CHUNK_SIZE, reference_frames: int = 200,
                    max_shift: float = 20.0, max_size: int = 256,
                    binning: int = 2) -> np.ndarray:
  """Movie [T, H, W] (a Movie or an array) -> [T, 2] float32 rigid shifts (dy, dx).

  Args:
    movie: the recording, read `chunk_size` frames at a time.
    reference: [H, W] image the frames are aligned to; None: the refined mean of
      the first `reference_frames` frames (see the module docstring).
    chunk_size: frames per read and per batched FFT.
    reference_frames: frames averaged for the default reference.
    max_shift: largest displacement searched, pixels per axis (also capped by the
      binned FFT window: half its side, minus two binned pixels).
    max_size: side of the central window used, pixels (before binning).
    binning: block size the window is averaged over; 1 keeps full resolution.
  """
  movie = as_movie(movie)
  correlator = _correlator(movie, reference, reference_frames, max_shift, max_size, binning)
  return np.concatenate([correlator.shifts(movie.read_native(start, start + chunk_size))
                         for start in range(0, len(movie), chunk_size)])


class _CorrectedMovie(Movie):
  """Base of the float32 movies that move another movie's frames (`_movie`) back."""

  _movie: Movie
  whole_pixels: bool

  def read_native(self, start: int, stop: int) -> np.ndarray:
    return self[start:stop]

  def _move_back(self, frames: np.ndarray, shifts: np.ndarray, out: np.ndarray) -> None:
    """Writes frames [n, H, W] moved back by shifts [n, 2] into out (rounded to whole
    pixels with `whole_pixels`)."""
    shift_frames(frames, np.round(shifts) if self.whole_pixels else shifts, out)

  def close(self) -> None:
    self._movie.close()


class ShiftedMovie(_CorrectedMovie):
  """A Movie [T, H, W] float32 whose frames are those of `movie` moved back by
  `shifts` [T, 2] (from `estimate_shifts`) when read, rounded to whole pixels with
  `whole_pixels`; closing it closes `movie`."""

  def __init__(self, movie, shifts: np.ndarray, whole_pixels: bool = False):
    self._movie = as_movie(movie)
    self.source = f"{self._movie.source} (motion-corrected)"
    self.shape, self.dtype = self._movie.shape, np.dtype(np.float32)
    self.shifts = np.asarray(shifts, np.float32)
    self.whole_pixels = whole_pixels
    if self.shifts.shape != (len(self._movie), 2) or not np.isfinite(self.shifts).all():
      raise DataError(self._movie.source, f"shifts must be finite [T, 2] = "
                      f"[{len(self._movie)}, 2], got shape {self.shifts.shape}")

  def read_into(self, start: int, stop: int, out: np.ndarray) -> None:
    self._move_back(self._movie.read_native(start, stop), self.shifts[start:stop], out)

class MotionCorrectedMovie(_CorrectedMovie):
  """A Movie [T, H, W] float32 whose frames are aligned as they are read: each chunk's
  shifts are estimated (as `estimate_shifts`, same arguments) and the chunk moved back
  (as `ShiftedMovie`), so one read of the file serves estimation and correction.

  `shifts` [T, 2] fills in as frames are read; `all_shifts()` completes it (reading
  frames not yet read) for a second pass, e.g. `ShiftedMovie(movie, all_shifts())`.
  With `whole_pixels`, shifts are rounded to whole pixels before frames are moved (a
  copy instead of bilinear interpolation, which would also blend neighbouring
  pixels' noise into the correlation image); `shifts` keeps the estimates.
  Closing it closes `movie`.
  """

  def __init__(self, movie, reference: np.ndarray | None = None, whole_pixels: bool = False,
               reference_frames: int = 200, max_shift: float = 20.0, max_size: int = 256,
               binning: int = 2):
    self._movie = as_movie(movie)
    self.source = f"{self._movie.source} (motion-corrected)"
    self.shape, self.dtype = self._movie.shape, np.dtype(np.float32)
    self.whole_pixels = whole_pixels
    self._correlator = _correlator(self._movie, reference, reference_frames, max_shift,
                                   max_size, binning)
    self.shifts = np.zeros((len(self._movie), 2), np.float32)
    self._estimated = np.zeros(len(self._movie), bool)

  def read_into(self, start: int, stop: int, out: np.ndarray) -> None:
    frames = self._movie.read_native(start, stop)
    if not self._estimated[start:stop].all():
      self.shifts[start:stop] = self._correlator.shifts(frames)
      self._estimated[start:stop] = True
    self._move_back(frames, self.shifts[start:stop], out)

  def all_shifts(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """[T, 2] float32 shifts of every frame, estimating those not read yet."""
    for start in np.flatnonzero(~self._estimated):
      if not self._estimated[start]:
        stop = min(start + chunk_size, len(self))
        self.shifts[start:stop] = self._correlator.shifts(self._movie.read_native(start, stop))
        self._estimated[start:stop] = True
    return self.shifts.copy()

  def close(self) -> None:
    self._movie.close()
