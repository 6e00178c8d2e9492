"""Config files and cadence resolution: one meaning for num_steps however it is set."""

import pathlib

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from neuroseg_jax import config_loading
from neuroseg_jax.training import defaults

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
# (config file, variant): variants whose cadences are fractions of the run.
SPECS = [("mae3d_pretrain.py", "cpu"), ("mae2d_pretrain.py", "cpu"),
         ("unetr3d_finetune.py", "cpu"), ("neuroseg3_seg.py", ""), ("neuroseg3_tico.py", "")]


def _from_flags(spec: str, *overrides: str) -> ml_collections.ConfigDict:
  """The config as the command line builds it: `--config=spec --config.a=b ...`."""
  argv = ["main", f"--config={spec}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def _config(**fields) -> ml_collections.ConfigDict:
  config = defaults.base_config()
  for name, value in fields.items():
    node, _, leaf = name.rpartition(".")
    (config[node] if node else config)[leaf] = value
  return config


@pytest.mark.parametrize("name,variant", SPECS)
def test_num_steps_argument_and_flag_override_resolve_alike(name, variant):
  path = CONFIGS / name
  as_argument = config_loading.load_config(
      f"{path}:{variant},num_steps=1234" if variant else f"{path}:num_steps=1234")
  as_flag = _from_flags(f"{path}:{variant}" if variant else str(path),
                        "--config.num_steps=1234")
  resolved = defaults.resolve_cadence(as_argument)
  assert resolved.to_dict() == defaults.resolve_cadence(as_flag).to_dict()
  assert resolved.num_steps == 1234


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.py")))
def test_smoke_variant_resolves_to_whole_steps(name):
  resolved = defaults.resolve_cadence(config_loading.load_config(f"{CONFIGS / name}:smoke"))
  for field in defaults.CADENCES:
    assert isinstance(resolved[field], int) and 1 <= resolved[field] <= resolved.num_steps
  assert isinstance(resolved.optimizer.warmup_steps, int)


def test_fractions_follow_num_steps_and_whole_numbers_are_steps():
  config = _config(num_steps=200, log_every=0.05, eval_every=0.25, checkpoint_every=40,
                   **{"optimizer.warmup_steps": 0.1})
  resolved = defaults.resolve_cadence(config)
  assert (resolved.log_every, resolved.eval_every, resolved.checkpoint_every) == (10, 50, 40)
  assert resolved.optimizer.warmup_steps == 20
  assert all(type(resolved[f]) is int for f in defaults.CADENCES)
  assert config.log_every == 0.05  # the input is left as it was


def test_zero_means_at_the_end_for_cadences_and_none_for_warmup():
  resolved = defaults.resolve_cadence(_config(num_steps=7, eval_every=0, checkpoint_every=0))
  assert (resolved.eval_every, resolved.checkpoint_every) == (7, 7)
  assert resolved.optimizer.warmup_steps == 0


def test_a_fraction_never_rounds_a_cadence_to_zero():
  resolved = defaults.resolve_cadence(_config(num_steps=3, log_every=0.01,
                                              **{"optimizer.warmup_steps": 0.05}))
  assert resolved.log_every == 1 and resolved.optimizer.warmup_steps == 0


@pytest.mark.parametrize("field,value", [("log_every", 2.5), ("checkpoint_every", -1),
                                         ("optimizer.warmup_steps", -0.5)])
def test_values_that_are_neither_fraction_nor_steps_are_rejected(field, value):
  with pytest.raises(ValueError, match=field.rpartition(".")[2]):
    defaults.resolve_cadence(_config(**{field: value}))


def test_cadence_flags_take_fractions_and_steps():
  spec = f"{CONFIGS / 'neuroseg3_seg.py'}:num_steps=400"
  assert defaults.resolve_cadence(_from_flags(spec, "--config.log_every=0.5")).log_every == 200
  assert defaults.resolve_cadence(_from_flags(spec, "--config.log_every=30")).log_every == 30


def test_an_old_argument_name_fails_with_the_valid_choices():
  with pytest.raises(ValueError, match="unknown config argument 'steps'.*num_steps"):
    config_loading.load_config(f"{CONFIGS / 'neuroseg3_seg.py'}:steps=10")


def test_abo_crops_are_at_the_scale_whole_fields_are_evaluated_at():
  """The recipe's crops cover ~image_size native pixels; zooming the evaluation
  letterbox 2x halves the native side a crop covers (a quarter of the area)."""
  def crop_area(arg):
    augment = config_loading.load_config(f"{CONFIGS / 'neuroseg3_seg.py'}:{arg}").data.augment
    low, high = augment.split("|")[0][len("resized_crop("):].split(",")[:2]
    return (float(low) + float(high)) / 2

  recipe = crop_area("abo")
  assert recipe == pytest.approx((160 / 487) ** 2, rel=1e-3)
  assert crop_area("abo,eval_image_size=1024") == pytest.approx(recipe / 4, rel=1e-3)
  assert crop_area("abo_zoom2") == pytest.approx((128 / 487) ** 2, rel=1e-3)
  zoomed = config_loading.load_config(f"{CONFIGS / 'neuroseg3_seg.py'}:abo_zoom2")
  assert (zoomed.data.image_size, zoomed.eval.image_size, zoomed.num_steps) == (256, 1024, 600)
