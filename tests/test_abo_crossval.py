"""The cross-validation script's config: the recipe with the command line's values."""

from experiments import abo_crossval


def test_fold_config_takes_split_recipe_and_micro_batches():
  args = abo_crossval.parse_args(["--workdir", "w", "--steps", "30", "--val_images",
                                  "524691284_0+539670003_0", "--grad_accum_steps", "4",
                                  "--batch_norm_stats_batches", "200"])
  config = abo_crossval.fold_config(args, 0)
  assert (config.num_steps, config.batch_size, config.data.image_size,
          config.data.val_images) == (30, 8, 160, "524691284_0+539670003_0")
  assert (config.grad_accum_steps, config.grad_accum_form, config.batch_norm_stats_batches,
          config.eval_every) == (4, "calls", 200, 0)
  one_pass = abo_crossval.fold_config(abo_crossval.parse_args(["--workdir", "w"]), 1)
  assert (one_pass.grad_accum_steps, one_pass.batch_norm_stats_batches, one_pass.data.fold) == (
      1, 0, 1)
