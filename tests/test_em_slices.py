"""EM slice pipeline: boundary targets, augmented crops, per-slice watershed, models, tuning."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuroseg_jax.data import em_slice_crops, intensity
from neuroseg_jax.errors import DataError
from neuroseg_jax.evaluation import em_classical, slice_segmentation as ss
from neuroseg_jax.models import unet, unetr, vit


def grid_cells(depth=2, size=48, cell=12):
  """[depth, size, size] labels: square cells separated by 2-px zero membranes."""
  labels = np.zeros((depth, size, size), np.uint32)
  k = 0
  for z in range(depth):
    for y in range(0, size, cell):
      for x in range(0, size, cell):
        k += 1
        labels[z, y + 1:y + cell - 1, x + 1:x + cell - 1] = k
  return labels


def test_boundary_map_marks_membrane_and_borders_of_touching_instances():
  labels = np.array([[1, 1, 2, 2],
                     [1, 1, 2, 2],
                     [0, 0, 2, 2]])
  expected = np.array([[0, 1, 1, 0],
                       [0, 1, 1, 0],
                       [1, 1, 0, 0]], np.float32)
  np.testing.assert_array_equal(em_slice_crops.boundary_map(labels), expected)


def test_dihedral_crops_keep_image_and_labels_aligned():
  labels = grid_cells(depth=3)
  images = (labels % 7).astype(np.float32) * 10 + 5
  stats = intensity.IntensityStats(0.0, 100.0, 0.0, 1.0)
  aug = em_slice_crops.SliceAugmentation(dihedral=True)
  rng = np.random.default_rng(0)
  for _ in range(8):
    crop = em_slice_crops.random_slice_crop(images, labels, (20, 24), rng, stats, aug)
    assert crop.image.shape == crop.labels.shape == (20, 24) or crop.image.shape == (24, 20)
    np.testing.assert_allclose(crop.image * 100.0, (crop.labels % 7) * 10 + 5, atol=1e-4)


def test_elastic_crops_only_move_labels_and_photometric_jitter_changes_the_image():
  labels = grid_cells(depth=1)
  images = labels.astype(np.float32)
  stats = intensity.intensity_stats(images)
  aug = em_slice_crops.SliceAugmentation(dihedral=False, elastic_alpha=3.0, contrast=0.3)
  crop = em_slice_crops.random_slice_crop(images, labels, (48, 48), np.random.default_rng(1),
                                          stats, aug)
  assert set(np.unique(crop.labels)) <= set(np.unique(labels))
  assert (crop.labels != labels[0]).mean() > 0.01  # deformed
  plain = em_slice_crops.random_slice_crop(images, labels, (48, 48), np.random.default_rng(1),
                                           stats, em_slice_crops.SliceAugmentation(False))
  np.testing.assert_array_equal(plain.labels, labels[0])
  with pytest.raises(DataError, match="larger than the slices"):
    em_slice_crops.random_slice_crop(images, labels, (64, 8), np.random.default_rng(0), stats)


def test_watershed_recovers_cells_from_a_clean_boundary_map_with_ids_unique_over_slices():
  labels = grid_cells(depth=2)
  boundary = em_slice_crops.boundary_map(labels)
  seg = ss.watershed_slices(boundary, ss.WatershedParams(0.5, 4, 0.0))
  assert not set(np.unique(seg[0])) & set(np.unique(seg[1]))
  scores = ss.slice_scores(labels, seg)
  np.testing.assert_allclose(scores["arand"], 0.0, atol=1e-12)
  np.testing.assert_allclose(scores["voi_merge"], 0.0, atol=1e-9)
  one = ss.slice_scores(labels, np.ones_like(seg))
  assert (one["arand"] > 0.8).all() and (one["voi_merge"] > 3).all()  # 16 equal cells


def test_seed_erosion_splits_two_cells_joined_through_a_membrane_gap():
  labels = np.zeros((1, 24, 40), np.uint32)
  labels[0, 2:22, 2:19], labels[0, 2:22, 21:38] = 1, 2
  boundary = em_slice_crops.boundary_map(labels)
  boundary[0, 10:13, 19:21] = 0.0  # a 3-px gap in the membrane between the cells
  merged = ss.watershed_slices(boundary, ss.WatershedParams(0.5, 4, 0.0, 0.0))
  split = ss.watershed_slices(boundary, ss.WatershedParams(0.5, 4, 0.0, 2.0))
  assert ss.slice_scores(labels, merged)["arand"][0] > 0.3  # two equal cells as one: 1/3
  assert ss.slice_scores(labels, split)["arand"][0] < 0.01


def test_tuning_picks_the_params_of_lowest_training_error():
  labels = grid_cells(depth=2)
  rng = np.random.default_rng(0)
  boundary = np.clip(em_slice_crops.boundary_map(labels) * 0.7 + rng.uniform(0, 0.3, labels.shape),
                     0, 1)
  grid = ss.WatershedGrid(seed_threshold=(0.05, 0.2, 0.5), min_seed_size=(1, 20),
                          smoothing=(0.0, 1.0), seed_erosion=(0.0, 2.0))
  best, table = ss.tune_watershed(boundary, labels, grid)
  assert len(table) == 24
  direct = {p: ss.mean_scores(ss.slice_scores(labels, ss.watershed_slices(boundary, p)))["arand"]
            for p in grid}
  assert best == min(direct, key=direct.get)
  for params, value in direct.items():
    assert table[params] == pytest.approx(value, abs=1e-12)


def test_tuning_on_several_threads_gives_the_one_thread_table(monkeypatch):
  labels = grid_cells(depth=3)
  rng = np.random.default_rng(2)
  boundary = np.clip(em_slice_crops.boundary_map(labels) * 0.7 + rng.uniform(0, 0.3, labels.shape),
                     0, 1).astype(np.float32)
  grid = ss.WatershedGrid(seed_threshold=(0.2, 0.5), min_seed_size=(1, 20), smoothing=(0.0, 1.0),
                          seed_erosion=(0.0,), merge_threshold=(0.0, 0.4))
  tuned = {}
  for cores in (1, 3):
    monkeypatch.setattr(ss.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
    tuned[cores] = ss.tune_watershed(boundary, labels, grid)
  assert tuned[1][0] == tuned[3][0] and list(tuned[1][1]) == list(tuned[3][1])
  assert tuned[1][1] == tuned[3][1] and len(tuned[1][1]) == 10  # 8 seeded + 2 agglomerated


def test_quantile_seeds_ignore_how_the_map_is_calibrated():
  labels = grid_cells(depth=2)
  rng = np.random.default_rng(3)
  boundary = np.clip(em_slice_crops.boundary_map(labels) * 0.7 + rng.uniform(0, 0.3, labels.shape),
                     0, 1).astype(np.float32)
  squashed = 0.35 + 0.5 * boundary  # the same ranking of pixels, every value above 0.3
  by_share = ss.WatershedParams(0.0, 4, 0.0, 0.0, seed_quantile=0.5)
  np.testing.assert_array_equal(ss.watershed_slices(boundary, by_share),
                                ss.watershed_slices(squashed, by_share))
  by_value = ss.WatershedParams(0.3, 4, 0.0, 0.0)
  assert ss.slice_scores(labels, ss.watershed_slices(boundary, by_value))["arand"].max() < 0.01
  assert ss.slice_scores(labels, ss.watershed_slices(squashed, by_value))["arand"].min() > 0.8
  # A quantile is the absolute threshold at that share of the slice's values.
  level = float(np.quantile(boundary[0], 0.5))
  np.testing.assert_array_equal(ss.watershed_slices(boundary[:1], by_share),
                                ss.watershed_slices(boundary[:1], ss.WatershedParams(level, 4, 0.0)))


def test_tuning_over_seed_quantiles_matches_direct_evaluation():
  labels = grid_cells(depth=2)
  rng = np.random.default_rng(4)
  boundary = np.clip(em_slice_crops.boundary_map(labels) * 0.7 + rng.uniform(0, 0.3, labels.shape),
                     0, 1).astype(np.float32)
  grid = ss.WatershedGrid(seed_threshold=(0.2,), min_seed_size=(1, 20), smoothing=(1.0,),
                          seed_erosion=(0.0,), seed_quantile=(0.1, 0.5, 0.9))
  best, table = ss.tune_watershed(boundary, labels, grid)
  direct = {p: ss.mean_scores(ss.slice_scores(labels, ss.watershed_slices(boundary, p)))["arand"]
            for p in grid}
  assert set(table) == set(direct) and len(table) == 8  # 2 absolute + 6 quantile
  assert sum(p.seed_quantile > 0 for p in table) == 6
  for params, value in direct.items():
    assert table[params] == pytest.approx(value, abs=1e-12)
  assert best == min(direct, key=direct.get)


def test_agglomeration_merges_across_a_faint_edge_but_not_across_membrane():
  labels = np.zeros((1, 24, 40), np.uint32)
  labels[0, 2:22, 2:19], labels[0, 2:22, 21:38] = 1, 2
  boundary = em_slice_crops.boundary_map(labels).astype(np.float32)
  boundary[0, 2:22, 10] = 0.3  # a faint false edge through cell 1
  def segment(merge):
    return ss.watershed_slices(boundary, ss.WatershedParams(0.0, 0, 0.0, 0.0, merge))
  assert ss.slice_scores(labels, segment(0.1))["arand"][0] > 0.1  # the faint edge splits
  merged = segment(0.5)
  assert ss.slice_scores(labels, merged)["arand"][0] < 0.01  # the membrane (score 1) holds
  assert merged.min() > 0  # every pixel labeled


def test_tuning_over_merge_thresholds_matches_direct_evaluation():
  labels = grid_cells(depth=2)
  rng = np.random.default_rng(1)
  boundary = np.clip(em_slice_crops.boundary_map(labels) * 0.7 + rng.uniform(0, 0.3, labels.shape),
                     0, 1).astype(np.float32)
  grid = ss.WatershedGrid(seed_threshold=(0.2, 0.4), min_seed_size=(1,), smoothing=(1.0,),
                          seed_erosion=(0.0,), merge_threshold=(0.0, 0.3, 0.6))
  best, table = ss.tune_watershed(boundary, labels, grid)
  direct = {p: ss.mean_scores(ss.slice_scores(labels, ss.watershed_slices(boundary, p)))["arand"]
            for p in grid}
  assert set(table) == set(direct) and len(table) == 4  # 2 seeded + 2 agglomerated
  for params, value in direct.items():
    assert table[params] == pytest.approx(value, abs=1e-12)
  assert best == min(direct, key=direct.get)


def test_classical_ridge_map_is_high_on_dark_pixels():
  images = np.array([[[10, 200], [110, 250]]], np.uint8)
  ridge = em_classical.dark_ridge_map(images, intensity.IntensityStats(10, 210, 0.5, 0.2))
  np.testing.assert_allclose(ridge, [[[1.0, 0.05], [0.5, 0.0]]], atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (1, 8, 16, 16, 1)])
def test_unet_keeps_the_spatial_shape_2d_and_3d(shape):
  model = unet.UNet(out_channels=3, width=4, levels=3)
  x = jnp.ones(shape)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  out = jax.eval_shape(lambda v: model.apply(v, x), variables)
  assert out.shape == shape[:-1] + (3,)
  with pytest.raises(DataError, match="multiples of 4"):
    model.init(jax.random.PRNGKey(0), jnp.ones((1, 30, 32, 1)))


def test_unet_parameter_count():
  # width 4, 2 levels: level 0 block (1->4, 4->4), level 1 block (4->8, 8->8), up 8->4,
  # decoder block (8->4, 4->4), head 4->1; convs have no bias, BN has scale + bias.
  conv = lambda cin, cout: 9 * cin * cout + 2 * cout  # noqa: E731
  expected = (conv(1, 4) + conv(4, 4) + conv(4, 8) + conv(8, 8) + (4 * 8 * 4 + 4)
              + conv(8, 4) + conv(4, 4) + (4 + 1))
  model = unet.UNet(1, width=4, levels=2)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 1))))
  assert sum(a.size for a in jax.tree.leaves(variables["params"])) == expected


def test_unetr_runs_on_2d_images_with_a_2d_patch():
  encoder = vit.ViTEncoder(width=16, depth=2, num_heads=2, patch_size=(8, 8), use_class_token=True)
  model = unetr.UNETR(encoder, 1, decoder_width=4)
  x = jnp.ones((2, 32, 32, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  assert jax.eval_shape(lambda v: model.apply(v, x), variables).shape == (2, 32, 32, 1)
  with pytest.raises(DataError, match="patch size"):
    model.init(jax.random.PRNGKey(0), jnp.ones((1, 4, 32, 32, 1)))


def test_watershed_params_round_trip_as_dict():
  params = ss.WatershedParams(0.2, 8, 1.0, 2.0)
  assert ss.WatershedParams(**dataclasses.asdict(params)) == params

