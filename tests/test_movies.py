"""Movie readers: each layout on small files, the real SIMA movie, and bad input."""

import struct
import threading

import h5py
import numpy as np
import pytest
import tifffile

from neuroseg_jax.errors import DataError
from neuroseg_jax.data.movies import ArrayMovie, StackMovie, open_movie, stream_chunks
from neuroseg_jax.data import tiff_stack
from neuroseg_jax.data.stacks import Hdf5Stack, SliceFolderStack
from neuroseg_jax.data.tiff_stack import TiffStack


@pytest.fixture
def frames():
  return np.random.default_rng(0).integers(0, 4000, size=(7, 5, 6)).astype(np.uint16)


def write_folder(folder, frames, names=None):
  folder.mkdir()
  names = names or [f"frame_{t}.tif" for t in range(len(frames))]
  for name, frame in zip(names, frames):
    tifffile.imwrite(folder / name, frame)
  return folder


def test_contiguous_tiff_is_memory_mapped(tmp_path, frames):
  tifffile.imwrite(tmp_path / "m.tif", frames)
  movie = open_movie(tmp_path / "m.tif")
  assert isinstance(movie, StackMovie) and isinstance(movie.stack._array, np.memmap)
  assert movie.shape == (7, 5, 6) and movie.dtype == np.uint16
  chunk = movie[2:5]
  assert chunk.dtype == np.float32
  np.testing.assert_array_equal(chunk, frames[2:5])
  np.testing.assert_array_equal(movie[-1], frames[6])


@pytest.mark.parametrize("imagej", [False, True])
def test_described_block_is_mapped_without_parsing_pages(tmp_path, frames, monkeypatch, imagej):
  tifffile.imwrite(tmp_path / "m.tif", frames, imagej=imagej)
  monkeypatch.setattr(tiff_stack, "_scan", None)  # parsing the pages would fail
  movie = open_movie(tmp_path / "m.tif")
  assert isinstance(movie.stack._array, np.memmap)
  np.testing.assert_array_equal(movie[:], frames)


def test_broken_page_chain_is_parsed_and_reported(tmp_path, frames, monkeypatch):
  path = tmp_path / "m.tif"
  tifffile.imwrite(path, frames)
  with tifffile.TiffFile(path) as tiff:  # point page 3's "next page" link past the end
    layout, page = tiff.tiff, tiff.pages[3]
    link = page.offset + layout.tagnosize + len(page.tags) * layout.tagsize
  data = bytearray(path.read_bytes())
  struct.pack_into(layout.offsetformat, data, link, len(data) + 100)
  path.write_bytes(bytes(data))
  scanned = []
  monkeypatch.setattr(tiff_stack, "_scan", lambda p, scan=tiff_stack._scan: scanned.append(p) or scan(p))
  with pytest.raises(DataError, match="m.tif: truncated or corrupt TIFF"):
    open_movie(path)
  assert scanned == [path]


def test_compressed_tiff_is_read_page_by_page(tmp_path, frames):
  tifffile.imwrite(tmp_path / "m.tiff", frames, compression="zlib")
  with open_movie(tmp_path / "m.tiff") as movie:
    assert isinstance(movie.stack, TiffStack) and movie.stack._array is None
    np.testing.assert_array_equal(movie[3:7], frames[3:7])
    np.testing.assert_array_equal(np.asarray(movie), frames)


def test_frame_folder_in_natural_order(tmp_path, frames):
  names = [f"img{t}.tif" for t in range(len(frames))]  # img10 would sort before img2 as text.
  folder = write_folder(tmp_path / "frames", frames, names)
  movie = open_movie(folder)
  assert isinstance(movie.stack, SliceFolderStack) and movie.shape == (7, 5, 6)
  np.testing.assert_array_equal(movie[1:4], frames[1:4])
  assert [p.name for p in movie.stack.files][:3] == ["img0.tif", "img1.tif", "img2.tif"]


def test_natural_order_beyond_nine(tmp_path):
  frames = np.arange(12, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
  movie = open_movie(write_folder(tmp_path / "f", frames))
  np.testing.assert_array_equal(movie[:][:, 0, 0], np.arange(12))


def test_hdf5_movie(tmp_path, frames):
  with h5py.File(tmp_path / "m.h5", "w") as f:
    f["mov"] = frames.astype(np.float32)
    f["other"] = frames[:2]
  with open_movie(tmp_path / "m.h5") as movie:
    assert isinstance(movie.stack, Hdf5Stack) and movie.dtype == np.float32
    np.testing.assert_array_equal(movie[0:3], frames[:3])
  with open_movie(tmp_path / "m.h5", key="other") as movie:
    assert movie.shape == (2, 5, 6)


def test_real_sima_movie(shared_data):
  path = shared_data / "sima_movie" / "example.tif"
  with open_movie(path) as movie:
    assert movie.shape == (20, 128, 256) and movie.dtype == np.uint16
    np.testing.assert_array_equal(movie[5:9], tifffile.imread(path)[5:9])
    assert 0 <= movie[:].min() and movie[:].max() <= 4094


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", ["nope.tif", "nope.h5", "nope_folder"])
def test_missing_path(tmp_path, name):
  with pytest.raises(DataError, match=f"{name}: file not found"):
    open_movie(tmp_path / name)


def test_unknown_suffix(tmp_path):
  (tmp_path / "m.avi").write_bytes(b"x")
  with pytest.raises(DataError, match=r"m\.avi: unknown stack format '\.avi'"):
    open_movie(tmp_path / "m.avi")


def test_two_dimensional_tiff(tmp_path):
  tifffile.imwrite(tmp_path / "one.tif", np.zeros((5, 6), np.uint16))
  with pytest.raises(DataError, match=r"one\.tif: expected a 3-D stack \[N, H, W\] of 2-D "
                     r"grayscale pages, got one page of shape \(5, 6\)"):
    open_movie(tmp_path / "one.tif")


def test_four_dimensional_hdf5(tmp_path):
  with h5py.File(tmp_path / "m.h5", "w") as f:
    f["mov"] = np.zeros((2, 3, 4, 5), np.float32)
  with pytest.raises(DataError, match=r"m\.h5:mov: expected a 3-D stack .* \(2, 3, 4, 5\)"):
    open_movie(tmp_path / "m.h5")


def test_unreadable_tiff(tmp_path):
  (tmp_path / "junk.tif").write_bytes(b"")
  with pytest.raises(DataError, match=r"junk\.tif: not a readable TIFF"):
    open_movie(tmp_path / "junk.tif")


def test_hdf5_without_dataset(tmp_path):
  with h5py.File(tmp_path / "m.h5", "w") as f:
    f["data"] = np.zeros((2, 3, 4), np.float32)
  with pytest.raises(DataError, match=r"m\.h5: no dataset 'mov' \(found: data\)"):
    open_movie(tmp_path / "m.h5")


def test_empty_hdf5_movie(tmp_path):
  with h5py.File(tmp_path / "m.h5", "w") as f:
    f["mov"] = np.zeros((0, 3, 4), np.float32)
  with pytest.raises(DataError, match=r"m\.h5:mov: empty stack of shape \(0, 3, 4\)"):
    open_movie(tmp_path / "m.h5")


def test_empty_folder(tmp_path):
  (tmp_path / "frames").mkdir()
  with pytest.raises(DataError, match="frames: no image files"):
    open_movie(tmp_path / "frames")


def test_nan_found_in_the_chunk_that_holds_it(tmp_path, frames):
  movie = frames.astype(np.float32)
  movie[4, 1, 2] = np.nan
  tifffile.imwrite(tmp_path / "m.tif", movie)
  reader = open_movie(tmp_path / "m.tif")
  np.testing.assert_array_equal(reader[0:4], movie[0:4])  # clean chunk reads fine.
  with pytest.raises(DataError, match=r"m\.tif: non-finite values \(NaN or inf\) in frame 4"):
    reader[3:6]


def test_inf_in_hdf5(tmp_path, frames):
  movie = frames.astype(np.float64)
  movie[6, 0, 0] = np.inf
  with h5py.File(tmp_path / "m.h5", "w") as f:
    f["mov"] = movie
  with pytest.raises(DataError, match=r"m\.h5:mov: non-finite values .* frame 6"):
    open_movie(tmp_path / "m.h5")[:]


def test_unsupported_dtype(tmp_path):
  tifffile.imwrite(tmp_path / "c.tif", np.zeros((3, 4, 5), np.complex64))
  with pytest.raises(DataError, match=r"c\.tif: unsupported pixel dtype complex64"):
    open_movie(tmp_path / "c.tif")
  with h5py.File(tmp_path / "b.h5", "w") as f:
    f["mov"] = np.zeros((3, 4, 5), bool)
  with pytest.raises(DataError, match=r"b\.h5:mov: unsupported pixel dtype bool"):
    open_movie(tmp_path / "b.h5")


def test_frame_folder_with_mismatched_frame(tmp_path, frames):
  folder = write_folder(tmp_path / "f", frames)
  tifffile.imwrite(folder / "frame_3.tif", np.zeros((4, 6), np.uint16))
  with pytest.raises(DataError, match=r"frame_3\.tif: image is \(4, 6\), but the first slice "
                     r"frame_0\.tif is \(5, 6\)"):
    open_movie(folder)


def test_frame_folder_with_stack_as_frame(tmp_path, frames):
  folder = write_folder(tmp_path / "f", frames[:2])
  tifffile.imwrite(folder / "frame_0.tif", frames[:3])
  with pytest.raises(DataError, match=r"frame_0\.tif: expected a 2-D grayscale image"):
    open_movie(folder)


class _ThreadRecordingMovie(ArrayMovie):
  """Records the thread and range of each read; frame `bad` (if any) is NaN."""

  def __init__(self, array, bad=None):
    super().__init__(array)
    self.reads, self.bad = [], bad

  def _read(self, start, stop):
    self.reads.append((threading.get_ident(), start, stop))
    frames = np.array(super()._read(start, stop))
    if self.bad is not None and start <= self.bad < stop:
      frames[self.bad - start] = np.nan
    return frames


@pytest.mark.parametrize("readers", [1, 2])
def test_stream_chunks_reads_every_frame_once_on_background_threads(readers):
  array = np.random.default_rng(0).random((23, 5, 6)).astype(np.float32)
  inner = _ThreadRecordingMovie(array)
  chunks = [(chunk.copy(), n) for chunk, n in stream_chunks(inner, 4, border=1,
                                                            readers=readers)]
  assert [n for _, n in chunks] == [4] * 5 + [3]
  served = np.concatenate([chunk[:n, 1:-1, 1:-1] for chunk, n in chunks])
  np.testing.assert_array_equal(served, array)
  assert all(chunk.shape == (4, 7, 8) for chunk, _ in chunks)
  borders = np.concatenate([np.ravel(c[:, [0, -1]]) for c, _ in chunks] +
                           [np.ravel(c[:, :, [0, -1]]) for c, _ in chunks])
  assert not borders.any()
  np.testing.assert_array_equal(chunks[-1][0][3, 1:-1, 1:-1], array[20])  # padded: first frame
  ranges = sorted((a, b) for _, a, b in inner.reads)
  assert [f for a, b in ranges for f in range(a, b)] == list(range(23))  # each frame once
  assert len(ranges) == sum(min(readers, min(4, 23 - t)) for t in range(0, 23, 4))
  threads = {thread for thread, _, _ in inner.reads}
  assert 1 <= len(threads) <= readers and threading.get_ident() not in threads


def test_stream_chunks_fills_the_last_chunk_and_waits_before_reusing_a_buffer():
  array = np.arange(10 * 2 * 2, dtype=np.float32).reshape(10, 2, 2)
  fill = np.full((2, 2), -1.0, np.float32)
  waits = []
  stream = stream_chunks(ArrayMovie(array), 4, fill=fill, wait=lambda: waits.append(1))
  chunks = []
  for chunk, n_valid in stream:
    chunks.append((chunk.copy(), n_valid))
    assert len(waits) == min(len(chunks), 2)  # called before the next read is started
  np.testing.assert_array_equal(chunks[-1][0][2:], np.broadcast_to(fill, (2, 2, 2)))
  np.testing.assert_array_equal(chunks[-1][0][:2], array[8:])


def test_stream_chunks_reports_a_bad_chunk_when_it_is_reached():
  array = np.ones((12, 4, 4), np.float32)
  stream = stream_chunks(_ThreadRecordingMovie(array, bad=6), 4)
  chunk, _ = next(stream)  # [4, 8) is read ahead, NaN inside
  np.testing.assert_array_equal(chunk, array[:4])
  with pytest.raises(DataError, match="frame 6"):
    next(stream)
