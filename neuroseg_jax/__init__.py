"""neuroseg_jax: label-efficient segmentation of brain imaging data in JAX/Flax."""

__version__ = "0.1.0"


def load_model(name_or_path: str = "builtin"):
  """The built-in NeuroSeg-III model or a model folder; see `neuroseg_jax.predictor`."""
  from neuroseg_jax import predictor  # pylint: disable=import-outside-toplevel
  return predictor.load_model(name_or_path)
