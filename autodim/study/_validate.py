"""Checks shared by the study and search-space files: each names the file and key at fault
and raises :class:`~autodim.errors.ConfigError`."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from autodim._io import safe_yaml_load
from autodim.errors import ConfigError


def _hint(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(where: str, mapping: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}{_hint(key, allowed)}; valid keys: "
                              f"{', '.join(allowed)}")


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping (key: value lines), got "
                          f"{type(value).__name__} {value!r}")
    return dict(value)


def _int(where: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if not number.is_integer():
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if minimum is not None and number < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value!r}")
    return int(number)


def _float(where: str, value: Any) -> float:
    # YAML 1.1 reads "1e-4" (no dot) as a string: accept numeric strings so users need not
    # know that rule.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if math.isnan(number):
        raise ConfigError(f"{where}: expected a number, got NaN")
    return number


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _str(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _dims(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of dims, got {value!r}")
    dims = tuple(sorted({_int(f"{where}[{i}]", v, minimum=0) for i, v in enumerate(value)}))
    return dims



def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return safe_yaml_load(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 at byte offset {exc.start}; re-save the "
                          "file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', exc)})"
                          ) from None
