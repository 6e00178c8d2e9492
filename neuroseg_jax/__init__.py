"""neuroseg_jax: label-efficient segmentation of brain imaging data in JAX/Flax."""

__version__ = "0.1.0"
