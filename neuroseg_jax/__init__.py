"""neuroseg_jax: label-efficient segmentation of brain imaging data in JAX/Flax."""

__version__ = "0.1.0"


def load_model(name_or_path: str = "builtin"):
  """The built-in NeuroSeg-III model or a model folder; see `neuroseg_jax.predictor`."""
  from neuroseg_jax import predictor  # pylint: disable=import-outside-toplevel
  return predictor.load_model(name_or_path)


def load_em_model(path: str):
  """A serial-EM boundary model folder written by `neuroseg-jax train-em`; see
  `neuroseg_jax.em_predictor`."""
  from neuroseg_jax import em_predictor  # pylint: disable=import-outside-toplevel
  return em_predictor.load_em_model(path)
