"""Atomic file writes (a half-written file never replaces a good one) and bounded reads of
YAML/JSON documents (size, alias expansion and nesting depth capped)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "atomic_save_npy",
           "safe_yaml_load", "safe_json_loads", "check_document", "MAX_DOC_BYTES",
           "MAX_YAML_BYTES", "MAX_YAML_NODES", "MAX_DOC_DEPTH"]

#: Caps on a YAML/JSON document read by autodim (studies, search spaces, specs, plans).
#: Real files are far below them; beyond them is a bomb (aliases, nesting) or the wrong file.
MAX_DOC_BYTES = 256 * 1024 * 1024
MAX_YAML_BYTES = 8 * 1024 * 1024
MAX_YAML_NODES = 1_000_000
MAX_DOC_DEPTH = 200


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    # np.save appends ".npy" to names without it, so write through a file handle.
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def check_document(obj: Any, where: str, *, max_nodes: int = MAX_YAML_NODES,
                   max_depth: int = MAX_DOC_DEPTH, error: type[Exception] | None = None) -> Any:
    """Walk ``obj`` (without recursion) and refuse it when it is nested deeper than
    ``max_depth`` or holds more than ``max_nodes`` values *as expanded*: a YAML alias counts
    every time it is used, so an alias bomb is caught although its parsed form is small."""
    err = error or _config_error()
    stack: list[tuple[Any, int]] = [(obj, 0)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise err(f"{where}: more than {max_nodes:,} values once expanded (YAML aliases "
                      "used over and over?): refused")
        if isinstance(value, dict):
            items: Any = value.values()
        elif isinstance(value, (list, tuple)):
            items = value
        else:
            continue
        if depth >= max_depth:
            raise err(f"{where}: nested more than {max_depth} levels deep: refused")
        stack.extend((v, depth + 1) for v in items)
    return obj


def _config_error() -> type[Exception]:
    from autodim.errors import ConfigError

    return ConfigError


def safe_yaml_load(text: str, where: str, *, error: type[Exception] | None = None,
                   max_bytes: int = MAX_YAML_BYTES, max_nodes: int = MAX_YAML_NODES) -> Any:
    """``yaml.safe_load`` with the document size, alias expansion and nesting bounded.

    Every YAML read in autodim goes through here. Raises ``error`` (default
    :class:`~autodim.errors.ConfigError`) with one line naming ``where``; YAML syntax errors
    are left to the caller (``yaml.YAMLError``), which knows how to word them.
    """
    import yaml

    err = error or _config_error()
    if len(text) > max_bytes:
        raise err(f"{where}: {len(text):,} characters, more than the {max_bytes:,} a YAML "
                  "file may have: refused")
    try:
        obj = yaml.safe_load(text)
    except RecursionError:
        raise err(f"{where}: nested too deeply to parse: refused") from None
    return check_document(obj, where, max_nodes=max_nodes, error=err)


def safe_json_loads(text: str | bytes, where: str, *, error: type[Exception] | None = None,
                    max_bytes: int = MAX_DOC_BYTES) -> Any:
    """``json.loads`` with the size and nesting depth bounded (one-line ``error``, never a
    ``RecursionError``); JSON syntax errors are left to the caller."""
    err = error or _config_error()
    if len(text) > max_bytes:
        raise err(f"{where}: {len(text):,} bytes, more than the {max_bytes:,} a JSON document "
                  "may have: refused")
    try:
        # JSON has no aliases, so its size is bounded by the text's: only the nesting needs
        # a check, and the parser's own recursion limit is it.
        return json.loads(text)
    except RecursionError:
        raise err(f"{where}: nested too deeply to parse: refused") from None
