"""Dimension searchers: one base class, a registry, one private module per method.

Importing this package registers the built-in searchers.
"""

from autodim.searchers.base import SearchResult, SearchTask, Searcher, Stopwatch, retrain
from autodim.searchers.registry import (create_searcher, get_searcher, list_searchers,
                                        register_searcher)

# Built-in searchers register themselves on import. Each line is added by the module's
# author; a missing module is a bug, not an optional feature.
_BUILTINS = ("_darts", "_pep", "_sseds", "_magprune", "_optembed", "_blackbox")


def _import_builtins() -> None:
    import importlib
    import importlib.util

    for mod in _BUILTINS:
        name = f"autodim.searchers.{mod}"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


_import_builtins()

__all__ = ["Searcher", "SearchTask", "SearchResult", "retrain", "Stopwatch", "register_searcher", "list_searchers",
           "get_searcher", "create_searcher"]
