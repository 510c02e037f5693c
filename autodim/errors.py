"""Exceptions a user can act on.

Every error raised for bad input derives from :class:`AutodimError`; the CLI prints its
message on one line (no traceback unless ``--debug``) and exits non-zero.
"""

from __future__ import annotations

__all__ = ["AutodimError", "DataError", "PlanError", "ConfigError", "BudgetError"]


class AutodimError(Exception):
    """Base class for errors caused by the user's input (files, settings, plans)."""


class DataError(AutodimError):
    """A data file or field is missing, malformed or inconsistent."""


class PlanError(AutodimError):
    """A dimension plan is malformed or does not fit the schema it is used with."""


class ConfigError(AutodimError):
    """A study, search-space or CLI setting is invalid."""


class BudgetError(AutodimError):
    """A byte budget cannot be met (too small for the smallest feasible model)."""
