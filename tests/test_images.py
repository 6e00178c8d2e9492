"""2-D summary-image files and the YOLO folder layout."""

import numpy as np
import pytest
import skimage.io
import tifffile

from neuroseg_jax.errors import DataError
from neuroseg_jax.data.images import list_yolo_folder, read_summary_image, read_yolo_example


def test_gray_png_rgb_png_and_float_tiff(tmp_path):
  gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
  skimage.io.imsave(tmp_path / "g.png", gray, check_contrast=False)
  skimage.io.imsave(tmp_path / "rgb.png", np.repeat(gray[..., None], 3, -1), check_contrast=False)
  tifffile.imwrite(tmp_path / "f.tif", gray.astype(np.float32) / 7)
  for name, expected in [("g.png", gray), ("rgb.png", gray), ("f.tif", gray / 7)]:
    image = read_summary_image(tmp_path / name)
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, expected, rtol=1e-6)


def test_real_abo_jpeg_and_labels(shared_data):
  pairs = list_yolo_folder(shared_data / "abo275")
  assert len(pairs) == 10 and pairs[0][0] == "501484643_0"
  image, masks = read_yolo_example(*pairs[0][1:])
  assert image.shape == (487, 487) and image.min() == 0 and image.max() == 255
  assert masks.shape == (254, 487, 487)
  assert image[masks.any(0)].mean() > 1.5 * image[~masks.any(0)].mean()  # labels on cells.


@pytest.mark.parametrize("array, problem", [
    (np.stack([np.zeros((4, 5)), np.ones((4, 5)), np.zeros((4, 5))], -1).astype(np.uint8),
     "colour image: channels differ"),
    (np.zeros((2, 4, 5), np.uint8),
     r"expected a 2-D grayscale image \[H, W\], got shape \(2, 4, 5\)"),
    (np.full((4, 5), np.nan, np.float32), "non-finite values"),
    (np.zeros((4, 5), np.complex64), "unsupported pixel dtype complex64"),
])
def test_bad_images(tmp_path, array, problem):
  tifffile.imwrite(tmp_path / "bad.tif", array)
  with pytest.raises(DataError, match=rf"bad\.tif: {problem}"):
    read_summary_image(tmp_path / "bad.tif")


def test_missing_and_unreadable(tmp_path):
  with pytest.raises(DataError, match=r"gone\.jpg: file not found"):
    read_summary_image(tmp_path / "gone.jpg")
  (tmp_path / "junk.png").write_bytes(b"junk")
  with pytest.raises(DataError, match=r"junk\.png: not a readable image file"):
    read_summary_image(tmp_path / "junk.png")


def test_folder_layout_errors(tmp_path):
  with pytest.raises(DataError, match="no images/ folder"):
    list_yolo_folder(tmp_path)
  (tmp_path / "images").mkdir()
  with pytest.raises(DataError, match=r"images: no images"):
    list_yolo_folder(tmp_path)
  skimage.io.imsave(tmp_path / "images" / "x1.png", np.zeros((4, 4), np.uint8),
                    check_contrast=False)
  with pytest.raises(DataError, match=r"x1\.txt: file not found \(label for x1\.png\)"):
    list_yolo_folder(tmp_path)
