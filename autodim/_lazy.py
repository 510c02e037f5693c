"""Lazy attribute access for package ``__init__`` modules (keeps ``import autodim`` fast)."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence


def lazy_attributes(module: str, lazy: Mapping[str, str], public: Sequence[str],
                    namespace: dict[str, Any]
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``module``: ``lazy[name]`` is the module to import
    ``name`` from on first access; the value is then cached in ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name in lazy:
            value = getattr(importlib.import_module(lazy[name]), name)
            namespace[name] = value  # later lookups skip __getattr__
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
