"""Dimension searchers: one base class, a registry, one private module per method.

Importing this package registers the built-in searchers.
"""

from autodim.searchers.base import Searcher, SearchResult, SearchTask, Stopwatch, retrain
from autodim.searchers.registry import (
    create_searcher,
    get_searcher,
    list_searchers,
    register_searcher,
)

# Built-in searchers register themselves on import.
_BUILTINS = ("_darts", "_pep", "_sseds", "_magprune", "_optembed", "_blackbox")


def _import_builtins() -> None:
    import importlib

    for mod in _BUILTINS:
        importlib.import_module(f"autodim.searchers.{mod}")


_import_builtins()

__all__ = ["Searcher", "SearchTask", "SearchResult", "retrain", "Stopwatch",
           "register_searcher", "list_searchers", "get_searcher", "create_searcher"]
