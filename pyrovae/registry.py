"""Name-to-factory registries, one per swappable part of a VAE.

Every part (dataset, prior, likelihood, guide family, network, estimator) is chosen by name from
the command line or a config file. A registry maps those names to factories; a decorator next to
each class fills it, so adding a part is one class and one decorator line.
"""

from __future__ import annotations

from typing import Callable, Dict, Generic, List, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to factories for one kind of part.

    >>> priors = Registry("prior")
    >>> @priors.register("flat")
    ... class Flat: ...
    >>> priors.get("flat").__name__
    'Flat'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a second use of a name is an error."""

        def decorate(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        """The factory registered as ``name``; an unknown name lists the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> List[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
