"""Name -> object registries, so configs select components by name, not if-chains."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from neuroseg_jax.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
  """A config named something no registry entry answers to."""

  def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
    return str(self.args[0])


class Registry(Generic[T]):
  """A named table of components of one kind (models, tasks, evaluators...).

  `kind` is only used in error messages: `Registry("model").get("vit_hug")`
  fails with "unknown model 'vit_hug'; valid choices: ...".
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator adding the decorated object under `name`."""

    def add(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = obj
      return obj

    return add

  def get(self, name: str) -> T:
    if name not in self._entries:
      raise UnknownNameError(
          f"unknown {self.kind} {name!r}; valid choices: {', '.join(sorted(self._entries))}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())
