"""Layer-wise learning-rate decay of a ViT encoder (`training/optimizers.py`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import random_variables
from neuroseg_jax.errors import ConfigError
from neuroseg_jax.models import unetr, vit
from neuroseg_jax.training import defaults, optimizers


@pytest.fixture(scope="module")
def params():
  """Parameters of a small UNETR with a 3-block ViT encoder."""
  encoder = vit.ViTEncoder(width=16, depth=3, num_heads=2, patch_size=(4, 4),
                           use_class_token=True)
  model = unetr.UNETR(encoder, out_channels=1, decoder_width=4)
  return random_variables.fan_in_variables(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1))))["params"]


def test_scales_follow_the_encoder_depth(params):
  scales = optimizers.layer_decay_scales(params, 0.5)
  encoder = scales["encoder"]
  assert encoder["patch_embed"]["kernel"] == 0.5**4
  assert encoder["cls_token"] == 0.5**4
  assert [encoder[f"blocks_{i}"]["norm1"]["scale"] for i in range(3)] == [0.5**3, 0.5**2, 0.5]
  assert encoder["norm"]["scale"] == 1.0
  decoder = [s for name, sub in scales.items() if name != "encoder"
             for s in jax.tree.leaves(sub)]
  assert decoder and all(s == 1.0 for s in decoder)


def test_adamw_step_is_scaled_per_layer(params):
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
  config = defaults.base_config()
  config.num_steps = 10
  config.optimizer.schedule = "constant"
  updates = {}
  for decay in (1.0, 0.5):
    config.optimizer.layer_decay = decay
    tx, _ = optimizers.make_optimizer(config)
    updates[decay], _ = jax.jit(tx.update)(grads, tx.init(params), params)
  ratio = jax.tree.map(lambda a, b: np.asarray(a / b), updates[0.5], updates[1.0])
  np.testing.assert_allclose(ratio["encoder"]["patch_embed"]["kernel"], 0.5**4, rtol=1e-6)
  np.testing.assert_allclose(ratio["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"], 0.5**3,
                             rtol=1e-6)
  np.testing.assert_allclose(ratio["head"]["kernel"], 1.0, rtol=1e-6)


def test_model_without_encoder_is_refused():
  config = defaults.base_config()
  config.optimizer.layer_decay = 0.75
  tx, _ = optimizers.make_optimizer(config)
  with pytest.raises(ConfigError, match="'encoder'.*backbone"):
    tx.init({"backbone": {"kernel": jnp.zeros(3)}})
