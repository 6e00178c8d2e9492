"""TiCo loss (Zhu et al. 2022, "TiCo: Transformation Invariance and Covariance
Contrast for Self-Supervised Visual Representation Learning") and the momentum
(EMA) encoder update.

With z = L2-normalised projections [N, D] of one view through the online branch
and z' those of the other view (here: through the momentum branch),

  B     = z^T z / N                                  (batch covariance, [D, D])
  C_new = beta * C + (1 - beta) * B                  (running covariance)
  loss  = 1 - mean_i <z_i, z'_i> + rho * mean_i z_i^T C_new z_i

following the paper's PyTorch-style pseudo-code (as also implemented by
lightly's `TiCoLoss`, which cites it): only the projections z of the first
argument (our online branch) enter the covariance, the loss uses the
already-updated C_new, and C_new is stored without gradient (`C.detach()`
after the backward pass). So this step's B IS differentiated inside this
step's loss, while the carried part beta * C is a constant. C starts at zeros.
The constant 1 (absent from the paper's "- mean cosine") makes a perfect
agreement read 0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
NORM_EPSILON = 1e-12


def l2_normalize(z: jax.Array) -> jax.Array:
  """[N, D] -> [N, D] rows scaled to unit L2 norm (norms below 1e-12 clamped)."""
  norm = jnp.linalg.norm(z, axis=-1, keepdims=True)
  return z / jnp.maximum(norm, NORM_EPSILON)


def update_covariance(covariance: jax.Array, z: jax.Array, beta: float) -> jax.Array:
  """C [D, D], normalised projections z [N, D] -> beta * C + (1 - beta) * z^T z / N."""
  return beta * covariance + (1.0 - beta) * (z.T @ z) / z.shape[0]


def tico_loss(online: jax.Array, target: jax.Array, covariance: jax.Array, beta: float = 0.9,
              rho: float = 20.0) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """TiCo loss of paired projections (row i of `online` and `target` = one image).

  Args:
    online: [N, D] raw projections of the online branch (normalised here).
    target: [N, D] raw projections of the other view (normalised here); the
      caller stops its gradient when it comes from a momentum branch.
    covariance: [D, D] running covariance C before this step.
    beta: running-average weight of the old covariance.
    rho: weight of the covariance-contrast term.

  Returns:
    (loss [], new covariance [D, D] to store (gradient stopped),
     {"invariance": 1 - mean cosine, "covariance_contrast": mean z^T C_new z}).
  """
  z = l2_normalize(online.astype(jnp.float32))
  z_other = l2_normalize(target.astype(jnp.float32))
  new_covariance = update_covariance(covariance, z, beta)
  invariance = 1.0 - jnp.mean(jnp.sum(z * z_other, axis=-1))
  contrast = jnp.mean(jnp.sum((z @ new_covariance) * z, axis=-1))
  metrics = {"invariance": invariance, "covariance_contrast": contrast}
  return invariance + rho * contrast, jax.lax.stop_gradient(new_covariance), metrics


def cosine_momentum(step: jax.Array, num_steps: int, base: float = 0.996,
                    final: float = 1.0) -> jax.Array:
  """EMA momentum rising from `base` (step 0) to `final` (step num_steps) on a half cosine:
  final - (final - base) * (1 + cos(pi * step / num_steps)) / 2 (BYOL's schedule)."""
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(num_steps, 1), 0.0, 1.0)
  return final - (final - base) * (1.0 + jnp.cos(jnp.pi * progress)) / 2.0


def ema_update(target: PyTree, online: PyTree, momentum: jax.Array) -> PyTree:
  """Momentum update of every leaf: momentum * target + (1 - momentum) * online."""
  return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)
