"""Post-processing to instances: waterz, mutex watershed, seeded watershed, components."""

import os
import sys
import threading

import numpy as np
import pytest
import tifffile

from neuroseg_jax.data import affinities as aff
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import em_metrics, em_postprocess as post
from neuroseg_jax.registry import UnknownNameError


def _neurons():
  """[6, 20, 20] uint32: touching instances, a background membrane and a small one."""
  labels = np.zeros((6, 20, 20), np.uint32)
  labels[:, :9, :10] = 1
  labels[:, :9, 10:] = 2      # touches 1 along x
  labels[:, 10:, :] = 3       # row 9 is a membrane (background)
  labels[3:, 10:, 12:] = 4    # touches 3 in z and along x
  labels[:3, 12:16, 2:6] = 5  # a small instance inside 3's slab
  return labels


def _same_partition(got, want):
  """Equal up to renumbering: both are relabelled by first appearance."""
  np.testing.assert_array_equal(post.relabel_sequential(got), post.relabel_sequential(want))


def test_waterz_recovers_instances_from_clean_affinities():
  labels = _neurons()
  affinities = aff.affinities_from_labels(labels)
  segmentation = post.waterz_segmentation(affinities, threshold=0.5)
  assert segmentation.shape == labels.shape and segmentation.dtype == np.uint32
  _same_partition(segmentation, labels)


def test_waterz_thresholds_control_merging():
  labels = _neurons()
  affinities = aff.affinities_from_labels(labels)
  across = aff.affinities_from_labels(np.where(labels == 2, 1, labels))  # 1 and 2 joined
  affinities = np.where((across == 1) & (affinities == 0), 0.6, affinities)  # weak cut 1|2
  low, high = post.waterz_segmentations(affinities, [0.7, 0.2])  # any order in, sorted out
  assert low[0] == 0.2 and high[0] == 0.7
  _same_partition(low[1], labels)                                 # 1 - 0.6 = 0.4 > 0.2: kept
  _same_partition(high[1], np.where(labels == 2, 1, labels))     # 0.4 < 0.7: merged


def test_mutex_watershed_recovers_instances():
  labels = _neurons()
  _same_partition(post.mutex_watershed(aff.affinities_from_labels(labels)), labels)
  offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, -3, 0), (0, 0, -3)]
  long_range = aff.affinities_from_labels(labels, offsets)
  _same_partition(post.mutex_watershed(long_range, offsets), labels)


def test_binary_contour_watershed_recovers_touching_mitochondria():
  labels = np.zeros((4, 24, 24), np.uint32)
  labels[:, 2:12, 2:12] = 1
  labels[:, 2:12, 12:22] = 2   # touches 1
  labels[1:3, 15:21, 4:10] = 3  # separate
  targets = aff.binary_contour_targets(labels, contour_width=1)
  got = post.binary_contour_watershed(targets, min_seed_size=4, min_size=10)
  _same_partition(got, labels)
  # Size filtering drops instance 3 (72 voxels).
  dropped = post.binary_contour_watershed(targets, min_seed_size=4, min_size=100)
  _same_partition(dropped, np.where(labels == 3, 0, labels))


def test_boundary_watershed_recovers_cells():
  labels = _neurons()[:, :9]  # instances 1 | 2, no background
  boundary = aff.instance_boundaries(labels, 1).astype(np.float32)
  _same_partition(post.boundary_watershed(boundary[..., None], seed_threshold=0.5,
                                          min_seed_size=1), labels)


def test_connected_components_and_size_filter():
  mask = np.zeros((3, 5, 5), bool)
  mask[0, 0, 0] = mask[1, 1, 1] = True  # diagonal neighbours
  mask[2, 3:5, 3:5] = True
  assert post.connected_components(mask, connectivity=26).max() == 2
  six = post.connected_components(mask, connectivity=6)
  assert six.max() == 3 and six.dtype == np.uint32
  filtered = post.connected_components(mask, connectivity=6, min_size=2)
  np.testing.assert_array_equal(filtered, mask * (np.arange(3) == 2)[:, None, None])
  probs = mask[..., None].astype(np.float32) * 0.8
  np.testing.assert_array_equal(post.POSTPROCESSORS.get("connected_components")(probs),
                                post.connected_components(mask))


def test_relabel_and_remove_small():
  labels = np.array([[[0, 7, 7, 3, 9, 9, 9]]], np.uint64)
  np.testing.assert_array_equal(post.relabel_sequential(labels), [[[0, 1, 1, 2, 3, 3, 3]]])
  np.testing.assert_array_equal(post.remove_small_instances(labels, 2), [[[0, 7, 7, 0, 9, 9, 9]]])


def test_registry_and_errors():
  assert set(post.POSTPROCESSORS.names()) == {
      "waterz", "mutex_watershed", "binary_contour_watershed", "boundary_watershed",
      "connected_components"}
  with pytest.raises(UnknownNameError, match="valid choices"):
    post.POSTPROCESSORS.get("zwatershed")
  with pytest.raises(DataError, match="C>=3"):
    post.waterz_segmentation(np.zeros((2, 4, 4, 2), np.float32))
  with pytest.raises(DataError, match="C>=2"):
    post.binary_contour_watershed(np.zeros((2, 4, 4), np.float32))


def test_real_nuclei_from_perfect_targets(shared_data):
  """Real 3D instance labels (20 nuclei): the post-processing loses nothing it could keep."""
  labels = tifffile.imread(shared_data / "volumes" / "nuclei_label.tif")
  # Perfect affinities only link 6-connected voxels: waterz returns exactly the
  # 6-connected pieces of the nuclei, minus single voxels (no affinity at all).
  pieces = post.connected_components(labels, connectivity=6, min_size=2)
  _same_partition(post.waterz_segmentation(aff.affinities_from_labels(labels)), pieces)
  instances = post.binary_contour_watershed(aff.binary_contour_targets(labels))
  assert em_metrics.instance_ap(labels, instances, 0.75) == pytest.approx(1.0)


def test_silencing_waterz_from_overlapping_threads_restores_stdout():
  """Thread B enters while A is inside and leaves after it (as tune_watershed's threads
  do): stdout, Python's and file descriptor 1, must come back as it was."""
  before_stdout, before_fd = sys.stdout, os.fstat(1)
  go, a_in, b_in, a_out, b_out = (threading.Event() for _ in range(5))
  errors = []

  def visit(enter_after, inside, leave_after, left):
    enter_after.wait(5)
    try:
      with post._STDOUT.silenced():
        inside.set()
        leave_after.wait(5)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
    left.set()

  threads = [threading.Thread(target=visit, args=(go, a_in, b_in, a_out)),
             threading.Thread(target=visit, args=(a_in, b_in, a_out, b_out))]
  go.set()
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not errors
  assert sys.stdout is before_stdout and not sys.stdout.closed
  after_fd = os.fstat(1)
  assert (after_fd.st_dev, after_fd.st_ino) == (before_fd.st_dev, before_fd.st_ino)
