"""Lists of z-slices written as text, like "0-14" or "0-4+10-12" (configs, commands)."""

from __future__ import annotations

from neuroseg_jax.errors import ConfigError


def parse_slices(text: str, depth: int, field: str) -> list[int]:
  """"0-14" / "3" / "0-4+10-12" -> sorted z indices, each inside [0, depth); a ConfigError
  naming `field` otherwise."""
  indices = set()
  try:
    for part in str(text).split("+"):
      first, _, last = part.partition("-")
      indices.update(range(int(first), int(last or first) + 1))
  except ValueError:
    raise ConfigError(f"{field}: expected slices written like 0-14 or 0-4+10-12, got {text!r}"
                      ) from None
  if not indices or min(indices) < 0 or max(indices) >= depth:
    raise ConfigError(f"{field}: slices {text!r} are not inside the volume's {depth} slices")
  return sorted(indices)


def slices_text(indices) -> str:
  """Sorted z indices -> the "0-4+10-12" form `parse_slices` reads."""
  runs = []
  for z in sorted(indices):
    if runs and z == runs[-1][1] + 1:
      runs[-1][1] = z
    else:
      runs.append([z, z])
  return "+".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)
