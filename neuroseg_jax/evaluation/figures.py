"""Per-image PNG: the input in grey with true and predicted neuron outlines."""

from __future__ import annotations

import os

from matplotlib import figure as mpl_figure
from matplotlib import patches
import numpy as np
from skimage import segmentation

from neuroseg_jax.evaluation import yolo_postprocess

TRUE_COLOUR = (0.1, 0.9, 0.2)  # green
PRED_COLOUR = (1.0, 0.1, 0.9)  # magenta


def outline(masks: np.ndarray) -> np.ndarray:
  """[N, H, W] bool -> [H, W] bool, the inner boundary pixels of every instance."""
  height, width = np.shape(masks)[1:]
  edges = np.zeros((height, width), bool)
  for mask in masks:
    extent = yolo_postprocess.mask_extent(mask)
    if extent is None:
      continue
    # The instance's extent plus a 1-pixel margin decides its boundary exactly.
    row0, row1, col0, col1 = extent
    window = (slice(max(row0 - 1, 0), row1 + 1), slice(max(col0 - 1, 0), col1 + 1))
    edges[window] |= segmentation.find_boundaries(mask[window], mode="inner")
  return edges


def overlay(image: np.ndarray, true_masks: np.ndarray, pred_masks: np.ndarray) -> np.ndarray:
  """[H, W] image + outlines -> [H, W, 3] float RGB in [0, 1].

  The image is scaled by its 1st-99th percentile; predicted outlines are drawn
  over true ones where both coincide.
  """
  low, high = np.percentile(image, [1, 99])
  grey = np.clip((np.asarray(image, np.float32) - low) / max(high - low, 1e-6), 0, 1)
  rgb = np.repeat(grey[..., None], 3, axis=-1)
  rgb[outline(true_masks)] = TRUE_COLOUR
  rgb[outline(pred_masks)] = PRED_COLOUR
  return rgb


def save_outline_figure(path: str | os.PathLike, image: np.ndarray, true_masks: np.ndarray,
                        pred_masks: np.ndarray, caption: str, numbered: bool = False) -> None:
  """Writes a PNG of `overlay` with a legend (true / predicted counts) and a caption.

  Args:
    path: output .png file (parent folders are created).
    image: [H, W] grey image at the masks' resolution.
    true_masks, pred_masks: [N, H, W] bool.
    caption: text under the image, e.g. "P 0.91  R 0.85  F1 0.88".
    numbered: write each predicted instance's id (its index + 1, as in a label image)
      at its centroid.
  """
  os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
  height, width = np.shape(image)
  caption_inches, image_inches = 0.6, 6.0 * height / width
  # A standalone Figure (no pyplot): no global backend state, safe in threads.
  fig = mpl_figure.Figure(figsize=(6.0, image_inches + caption_inches), dpi=max(100, width // 5))
  caption_frac = caption_inches / (image_inches + caption_inches)
  axes = fig.add_axes((0.0, caption_frac, 1.0, 1.0 - caption_frac))
  axes.imshow(overlay(image, true_masks, pred_masks), interpolation="nearest")
  axes.set_axis_off()
  if numbered:
    for index, mask in enumerate(pred_masks):
      rows, cols = np.nonzero(mask)
      if len(rows):
        axes.text(cols.mean(), rows.mean(), str(index + 1), color="yellow", fontsize=5,
                  ha="center", va="center")
  handles = [patches.Patch(color=PRED_COLOUR, label=f"predicted ({len(pred_masks)})")]
  if len(true_masks):
    handles.insert(0, patches.Patch(color=TRUE_COLOUR, label=f"true ({len(true_masks)})"))
  axes.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
  fig.text(0.5, caption_frac / 2, caption, ha="center", va="center", fontsize=10)
  fig.savefig(path)
