"""User commands of the `neuroseg-jax` console script, one module each."""
