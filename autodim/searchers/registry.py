"""Registry of searchers: ``register_searcher``, ``list_searchers``, ``create_searcher``."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, TypeVar

from autodim.errors import ConfigError
from autodim.searchers.base import Searcher

__all__ = ["register_searcher", "list_searchers", "get_searcher", "create_searcher"]

_REGISTRY: dict[str, type[Searcher]] = {}
S = TypeVar("S", bound=type[Searcher])


def register_searcher(name: str) -> Callable[[S], S]:
    """Class decorator: make a :class:`Searcher` available as ``name``.

    Example:
        >>> from autodim.searchers import Searcher, register_searcher
        >>> @register_searcher("my_method")
        ... class MySearcher(Searcher):
        ...     def search(self, task): ...
    """

    def deco(cls: S) -> S:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"searcher {name!r} is already registered by {_REGISTRY[name]}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_searchers(pattern: str = "*") -> list[str]:
    """Registered searcher names matching a glob pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_searcher(name: str) -> type[Searcher]:
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"unknown method {name!r}{extra}; registered: "
                          f"{', '.join(sorted(_REGISTRY))}") from None


def create_searcher(name: str, **settings: Any) -> Searcher:
    """Instantiate a registered searcher; unknown settings raise a clear error."""
    cls = get_searcher(name)
    try:
        return cls(**settings)
    except TypeError as exc:
        raise ConfigError(f"method {name!r}: {exc}") from None
