"""conv_blocks.ConvTranspose (kernel = stride) equals flax's nn.ConvTranspose."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuroseg_jax.models import conv_blocks


@pytest.mark.parametrize("shape,stride", [((2, 5, 6, 3), (2, 2)),
                                          ((2, 3, 4, 5, 2), (1, 2, 2)),
                                          ((1, 2, 3, 4, 3), (2, 3, 2))])
def test_transposed_conv_equals_flax_in_parameters_values_and_gradients(shape, stride):
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  ours = conv_blocks.ConvTranspose(4, stride)
  flax_layer = nn.ConvTranspose(4, stride, strides=stride, padding="VALID")
  params = ours.init(jax.random.key(1), x)
  reference_params = flax_layer.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, params, reference_params)  # same init
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias as well

  def loss(layer):
    return lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x)))
  value, grads = jax.value_and_grad(loss(ours), (0, 1))(params, x)
  reference_value, reference_grads = jax.value_and_grad(loss(flax_layer), (0, 1))(params, x)
  assert ours.apply(params, x).shape == (shape[0], *[n * s for n, s in zip(shape[1:-1], stride)], 4)
  np.testing.assert_allclose(value, reference_value, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_transposed_conv_keeps_flax_module_names():
  """Checkpoints of decoders built with flax's layer load into this one."""
  class Decoder(nn.Module):
    @nn.compact
    def __call__(self, x):
      return conv_blocks.upsample(2, (2, 2), jnp.float32)(x)
  params = Decoder().init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))["params"]
  assert list(params) == ["ConvTranspose_0"]
