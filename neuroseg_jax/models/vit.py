"""Vision Transformer encoder for 2D images and 3D volumes (one implementation).

Inputs are channels-last: images [B, H, W, C] with a 2-tuple patch size, volumes
[B, D, H, W, C] with a 3-tuple patch size (anisotropic, e.g. (1, 16, 16) or
(4, 16, 16)). Patches become tokens through a strided convolution (kernel =
stride = patch size); tokens are ordered row-major over the token grid and get a
fixed sine-cosine position embedding (`position_embeddings.py`), not a parameter.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from neuroseg_jax.errors import DataError
from neuroseg_jax.models.position_embeddings import sincos_position_embedding
from neuroseg_jax.registry import Registry

LAYER_NORM_EPSILON = 1e-6

VIT_SIZES: Registry[dict] = Registry("ViT size")
for _name, (_width, _depth, _heads) in {
    "mu": (32, 2, 2),    # for tests and smoke runs only
    "mini": (64, 4, 4),  # small runs on a laptop CPU
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}.items():
  VIT_SIZES.register(_name)({"width": _width, "depth": _depth, "num_heads": _heads})


def token_grid_shape(spatial: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
  """Tokens per axis for an input of spatial shape (D, H, W) or (H, W).

  Raises DataError when the rank differs from the patch size's or a size is not
  a multiple of the patch.
  """
  spatial, patch_size = tuple(spatial), tuple(patch_size)
  if len(spatial) != len(patch_size) or any(s % p for s, p in zip(spatial, patch_size)):
    raise DataError("ViT input",
                    f"spatial shape {spatial} is not tileable by patch size {patch_size}")
  return tuple(s // p for s, p in zip(spatial, patch_size))


class MlpBlock(nn.Module):
  """[..., width] -> Dense(hidden) -> GELU -> Dense(width) -> [..., width]."""
  hidden: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    width = x.shape[-1]
    x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(width, dtype=self.dtype, name="fc2")(x)


class TransformerBlock(nn.Module):
  """Pre-norm block: x + MHA(LN(x)), then x + MLP(LN(x)). [B, N, width] -> [B, N, width]."""
  num_heads: int
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    width = x.shape[-1]
    y = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="norm1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.dropout_rate,
        deterministic=not train, name="attn")(y, y)
    x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="norm2")(x)
    y = MlpBlock(self.mlp_ratio * width, self.dropout_rate, self.dtype, name="mlp")(y, train=train)
    return x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class ViTEncoder(nn.Module):
  """ViT over 2D or 3D inputs; the rank is set by `len(patch_size)`.

  Submodules: `patch_embed` (strided conv), `blocks_{i}` (list `blocks`), `norm`
  (final LayerNorm); parameter `cls_token` [1, 1, width] when `use_class_token`.
  Dropout (attention, MLP and residual branches) only acts with `train=True`
  and `dropout_rate > 0`, and then needs a "dropout" rng.
  """
  width: int
  depth: int
  num_heads: int
  mlp_ratio: int = 4
  patch_size: tuple = (1, 16, 16)
  use_class_token: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    self.patch_embed = nn.Conv(self.width, kernel_size=tuple(self.patch_size),
                               strides=tuple(self.patch_size), padding="VALID",
                               dtype=self.dtype)
    self.blocks = [TransformerBlock(self.num_heads, self.mlp_ratio, self.dropout_rate, self.dtype)
                   for _ in range(self.depth)]
    self.norm = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype)
    if self.use_class_token:
      self.cls_token = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.width))

  def grid_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
    """Token grid (g_0, ..., g_{n-1}) = spatial // patch_size for spatial (D, H, W) or (H, W)."""
    return token_grid_shape(spatial, self.patch_size)

  def embed(self, x: jax.Array, *, position_embedding: bool = True) -> jax.Array:
    """[B, *spatial, C] -> [B, N, width] patch tokens (+ position embedding), N = prod(grid)."""
    grid = self.grid_shape(x.shape[1:-1])
    tokens = self.patch_embed(x.astype(self.dtype)).reshape(x.shape[0], -1, self.width)
    if not position_embedding:
      return tokens
    return tokens + jnp.asarray(sincos_position_embedding(grid, self.width), self.dtype)

  def __call__(self, x: jax.Array, *, train: bool = False, keep_indices: jax.Array | None = None,
               position_embedding: bool = True, return_block_outputs: bool = False):
    """Encodes all tokens, or only those at `keep_indices`.

    Args:
      x: [B, *spatial, C].
      train: enables dropout.
      keep_indices: optional [B, K] int token indices (row-major grid order) to
        keep, e.g. the visible tokens of a masked autoencoder.
      position_embedding: add the fixed position embedding (False: same
        parameters, embedding left out, as UNETR's reference fine-tuning does).
      return_block_outputs: also return every block's output (UNETR's skips).

    Returns:
      tokens [B, T, width] after the final LayerNorm, T = K (or N) tokens, plus
      1 for the class token (at index 0) when used; and, if
      `return_block_outputs`, a list of `depth` arrays [B, T, width]: each
      block's output before the final norm, class token included when used.
    """
    tokens = self.embed(x, position_embedding=position_embedding)
    if keep_indices is not None:
      tokens = jnp.take_along_axis(tokens, keep_indices[..., None], axis=1)
    if self.use_class_token:
      cls = jnp.broadcast_to(self.cls_token.astype(self.dtype), (tokens.shape[0], 1, self.width))
      tokens = jnp.concatenate([cls, tokens], axis=1)
    block_outputs = []
    for block in self.blocks:
      tokens = block(tokens, train=train)
      block_outputs.append(tokens)
    tokens = self.norm(tokens)
    return (tokens, block_outputs) if return_block_outputs else tokens

