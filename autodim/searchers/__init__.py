"""Dimension searchers: one base class, a registry, one private module per method.

Importing this package registers the built-in searchers.
"""

# Built-in searchers register themselves on import. Importing any module of this package
# (the registry included) runs this file first, so the registry never needs to import back.
from autodim.searchers import (  # noqa: F401
    _blackbox,
    _darts,
    _magprune,
    _optembed,
    _pep,
    _sseds,
)
from autodim.searchers.base import Searcher, SearchResult, SearchTask, Stopwatch, retrain
from autodim.searchers.registry import (
    create_searcher,
    get_searcher,
    list_searchers,
    register_searcher,
)

__all__ = ["Searcher", "SearchTask", "SearchResult", "retrain", "Stopwatch",
           "register_searcher", "list_searchers", "get_searcher", "create_searcher"]
