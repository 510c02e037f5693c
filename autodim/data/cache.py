"""On-disk cache of encoded datasets: encode a real file once, memory-map it afterwards.

A cache entry is a folder ``<cache_dir>/<loader>-<name>-<key>`` written by
:meth:`CTRData.save` (``<split>_ids.npy``, labels, ``schema.json``, ``freqs.npz``, then
``meta.json`` last) plus ``encoders.json``. The key hashes the input files' absolute paths,
sizes and modification times, the loader options and :data:`LOADER_VERSION`, so editing a
file or an option gives a new entry. Entries are built in a temporary folder and renamed
into place: a killed build never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from autodim.data.dataset import CTRData
from autodim.data.encode import Encoder, save_encoders
from autodim.errors import DataError

__all__ = ["LOADER_VERSION", "cache_folder", "cache_key", "cached", "default_cache_dir"]

# Bump when a loader's output changes for the same input: old entries then miss.
LOADER_VERSION = 1


def default_cache_dir() -> Path:
    """``$AUTODIM_CACHE``, else ``~/.cache/autodim/cache``."""
    env = os.environ.get("AUTODIM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autodim" / "cache"


def cache_key(loader: str, inputs: Iterable[str | Path], options: Mapping[str, Any]) -> str:
    """Hash of (loader, input files' absolute path + size + mtime, options, version)."""
    stamps = []
    for p in inputs:
        p = Path(p).expanduser().resolve()
        st = p.stat()
        stamps.append([str(p), st.st_size, st.st_mtime_ns])
    payload = json.dumps({"loader": loader, "version": LOADER_VERSION, "inputs": stamps,
                          "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_folder(cache_dir: str | Path | None, loader: str, name: str, key: str) -> Path:
    """The entry folder; ``name`` (e.g. the file stem) only makes it readable."""
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40]
    return root / f"{loader}-{safe}-{key}"


def _install(tmp: Path, folder: Path) -> None:
    """Move a finished build onto ``folder``, replacing an old or incomplete entry."""
    trash = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    if folder.exists():
        os.replace(folder, trash)  # a rename: the entry is never half-deleted
    try:
        os.replace(tmp, folder)
    except OSError:
        # Another process installed the same entry meanwhile; theirs is complete too.
        if not (folder / "meta.json").exists():
            raise
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_temps(folder: Path) -> None:
    """Delete temp builds of this entry left by processes that were killed."""
    for tmp in folder.parent.glob(f".{folder.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)  # raises if no such process: the build is dead
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def cached(build: Callable[[], tuple[CTRData, dict[str, Encoder]]], folder: Path, *,
           refresh: bool = False) -> CTRData:
    """Return the entry at ``folder`` (memory-mapped) or build, save and return it.

    Args:
        build: Makes ``(data, encoders)``; called only on a miss or with ``refresh``.
        folder: The entry folder (see :func:`cache_folder`).
        refresh: Rebuild even if a complete entry exists.
    """
    if not refresh and (folder / "meta.json").exists():
        try:
            return CTRData.load(folder, mmap=True)
        except (DataError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            warnings.warn(f"{folder}: unreadable data cache ({exc}); rebuilding", stacklevel=3)
    data, encoders = build()
    data.meta["cache_key"] = folder.name
    if folder.parent.is_dir():
        _remove_stale_temps(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        save_encoders(tmp, encoders)
        data.save(tmp)  # writes meta.json last
        _install(tmp, folder)
    except OSError as exc:
        # A read-only or full disk should not stop the run: the data is in memory.
        warnings.warn(f"could not write data cache {folder}: {exc}", stacklevel=3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data
