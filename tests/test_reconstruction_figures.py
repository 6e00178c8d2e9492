"""Reconstruction panels (masked input, reconstruction) and the PNG of central slices."""

import numpy as np
from PIL import Image

from neuroseg_jax.evaluation.reconstruction_figures import (reconstruction_panels,
                                                            save_reconstruction_figure)
from neuroseg_jax.losses.reconstruction import reconstruction_targets
from neuroseg_jax.models.mae import patchify


def test_panels_of_a_perfect_prediction_give_back_the_input(tmp_path):
  rng = np.random.default_rng(0)
  inputs = rng.uniform(size=(2, 2, 8, 8, 1)).astype(np.float32)
  patch = (1, 4, 4)
  mask = np.array([[1, 0, 0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 0]], np.float32)
  perfect = np.asarray(reconstruction_targets(patchify(inputs, patch), norm_pix=True))
  masked, reconstruction = reconstruction_panels(inputs, perfect, mask, patch, norm_pix=True)
  np.testing.assert_allclose(reconstruction, inputs, atol=1e-4)
  # Token 0 = z 0, rows 0-3, cols 0-4 (masked in example 0); token 1 = cols 4-8 (visible).
  np.testing.assert_array_equal(masked[0, 0, :4, :4], 0)
  np.testing.assert_array_equal(masked[0, 0, :4, 4:], inputs[0, 0, :4, 4:])
  # A wrong prediction shows up in masked patches only.
  _, wrong = reconstruction_panels(inputs, np.zeros_like(perfect), mask, patch, norm_pix=False)
  np.testing.assert_array_equal(wrong[0, 0, :4, :4], 0)
  np.testing.assert_array_equal(wrong[0, 0, :4, 4:], inputs[0, 0, :4, 4:])

  path = tmp_path / "figs" / "recon.png"
  save_reconstruction_figure(path, inputs, masked, reconstruction, title="step 3")
  image = np.asarray(Image.open(path))
  assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > image.shape[0]
  assert image[..., :3].std() > 10  # not a blank canvas
