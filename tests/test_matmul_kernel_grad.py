"""The convolution with a matrix-product kernel gradient equals lax's, value and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from neuroseg_jax.models import matmul_kernel_grad
from neuroseg_jax.models import yolo_blocks

LAYOUT = ("NHWC", "HWIO", "NHWC")


def _loss(conv, strides, padding, **kwargs):
  def loss(x, kernel):
    dn = lax.conv_dimension_numbers(x.shape, kernel.shape, LAYOUT)
    y = conv(x, kernel, strides, padding, dimension_numbers=dn, **kwargs)
    return jnp.sum(jnp.sin(y.astype(jnp.float32)))  # a cotangent that differs per position
  return loss


@pytest.mark.parametrize("size,channels,kernel,strides,padding", [
    ((9, 11), (3, 5), 3, (1, 1), ((1, 1), (1, 1))),
    ((9, 11), (3, 5), 3, (2, 2), ((1, 1), (1, 1))),   # a stride-2 downsampling conv
    ((8, 8), (4, 6), 1, (1, 1), ((0, 0), (0, 0))),
    ((10, 7), (2, 3), 3, (2, 1), ((0, 2), (1, 0))),   # uneven strides and padding
    ((6, 6), (2, 2), 3, (1, 1), "SAME"),
    ((7, 9), (3, 4), 5, (1, 1), "VALID"),
    ((11, 13), (3, 4), 5, (3, 2), ((2, 1), (0, 3))),   # kernel not a multiple of the stride
    ((13, 9), (2, 3), 2, (2, 2), "VALID"),   # the last input row is never read
])
def test_value_and_gradients_equal_lax(size, channels, kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, *size, channels[0])), jnp.float32)
  k = jnp.asarray(rng.normal(size=(kernel, kernel, *channels)), jnp.float32)
  ours = jax.jit(jax.value_and_grad(_loss(matmul_kernel_grad.conv_general_dilated, strides,
                                          padding), (0, 1)))(x, k)
  reference = jax.value_and_grad(_loss(lax.conv_general_dilated, strides, padding),
                                 (0, 1))(x, k)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_kernel_gradient_is_a_product_not_a_convolution():
  """The compiled kernel gradient holds one product (looped over the taps) and only the
  forward and input-gradient convolutions (lax's adds a third, batch-as-features one)."""
  x = jnp.zeros((2, 16, 16, 8), jnp.float32)
  k = jnp.zeros((3, 3, 8, 8), jnp.float32)
  def count(conv):
    grad = jax.jit(jax.grad(_loss(conv, (1, 1), ((1, 1), (1, 1))), argnums=1))
    text = grad.lower(x, k).as_text()
    return text.count("stablehlo.convolution"), text.count("stablehlo.dot_general")
  assert count(lax.conv_general_dilated) == (2, 0)
  assert count(matmul_kernel_grad.conv_general_dilated) == (1, 1)


def test_taps_are_copied_one_at_a_time():
  """A 5 x 5 kernel gradient's temporaries hold about three copies of the input (the
  padded input, dy in its frame, one tap's rows), not one per tap (25)."""
  x = jnp.zeros((2, 64, 64, 16), jnp.float32)
  dy = jnp.zeros((2, 64, 64, 16), jnp.float32)
  gradient = jax.jit(lambda x, dy: matmul_kernel_grad.kernel_gradient(
      x, dy, (5, 5, 16, 16), (1, 1), ((2, 2), (2, 2))))
  temporaries = gradient.lower(x, dy).compile().memory_analysis().temp_size_in_bytes
  assert temporaries < 4 * x.nbytes


def test_other_layouts_go_to_lax_unchanged():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
  for kwargs in ({"feature_group_count": 2}, {"rhs_dilation": (2, 2)}):
    kernel = k if "feature_group_count" in kwargs else k[:, :, :1].repeat(4, 2)
    ours = jax.grad(_loss(matmul_kernel_grad.conv_general_dilated, (1, 1), "SAME", **kwargs),
                    (0, 1))(x, kernel)
    reference = jax.grad(_loss(lax.conv_general_dilated, (1, 1), "SAME", **kwargs),
                         (0, 1))(x, kernel)
    for a, b in zip(ours, reference):
      np.testing.assert_array_equal(a, b)


def test_bfloat16_compute_keeps_float32_parameters_and_close_gradients():
  conv = yolo_blocks.conv2d(6, 3, use_bias=False, dtype=jnp.bfloat16)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 12, 12, 4)), jnp.float32)
  params = jax.jit(conv.init)(jax.random.key(0), x)["params"]
  grad = jax.jit(jax.grad(
      lambda p: jnp.sum(jnp.sin(conv.apply({"params": p}, x).astype(jnp.float32)))))
  ours = grad(params)["kernel"]
  assert ours.dtype == jnp.float32
  plain = yolo_blocks.conv2d(6, 3, use_bias=False, dtype=jnp.float32)
  reference = jax.jit(jax.grad(
      lambda p: jnp.sum(jnp.sin(plain.apply({"params": p}, x)))))(params)["kernel"]
  np.testing.assert_allclose(ours, reference, rtol=0.05, atol=0.05 * float(
      np.abs(reference).max()))


@pytest.mark.parametrize("shape,kernel,strides", [((10, 3), (3, 3, 4), (2,)),
                                                  ((5, 6, 7, 2), (3, 3, 3, 2, 3), (1, 2, 1))])
def test_one_and_three_spatial_axes(shape, kernel, strides):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, *shape)), jnp.float32)
  k = jnp.asarray(rng.normal(size=kernel), jnp.float32)
  layout = matmul_kernel_grad.channels_last(len(shape) - 1)
  def loss(conv):
    return lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, "SAME", dimension_numbers=layout)))
  ours = jax.jit(jax.value_and_grad(loss(matmul_kernel_grad.conv_general_dilated), (0, 1)))(x, k)
  reference = jax.value_and_grad(loss(lax.conv_general_dilated), (0, 1))(x, k)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
