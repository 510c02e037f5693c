"""One entry point for every data source: ``load_data("ml-100k")``, a file, or synthetic.

Real-file sources are encoded once and cached (see :mod:`autodim.data.cache`); synthetic
data is regenerated from its seed (cheaper than reading it back).
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autodim.data.cache import cache_folder, cache_key, cached
from autodim.data.criteo import build_criteo
from autodim.data.dataset import CTRData
from autodim.data.recbole import build_recbole, recbole_files
from autodim.data.tabular import build_table, read_spec, table_files
from autodim.errors import DataError

__all__ = ["ACCEPTED_SOURCES", "ML100K_NAMES", "find_ml100k", "load_data"]

ML100K_NAMES = ("ml-100k", "movielens-100k")
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
CRITEO_SUFFIXES = (".tsv", ".txt", ".gz")
ACCEPTED_SOURCES = (
    "'synthetic' or 'synthetic:<preset>'; 'ml-100k' / 'movielens-100k'; a folder with "
    "RecBole atomic files (*.inter, *.user, *.item); a .csv/.csv.gz/.parquet file with a "
    "YAML spec (spec=... or a <file>.yaml / <stem>.spec.yaml beside it); a Criteo "
    ".tsv/.txt/.gz file"
)


def find_ml100k() -> Path:
    """The MovieLens-100K folder under ``$AUTODIM_DATA_HOME`` or ``~/.cache/autodim``."""
    homes = [Path(os.environ["AUTODIM_DATA_HOME"]).expanduser()] if os.environ.get(
        "AUTODIM_DATA_HOME") else []
    homes.append(Path.home() / ".cache" / "autodim")
    for home in homes:
        folder = home / "ml-100k"
        if folder.is_dir() and any(folder.glob("*.inter")):
            return folder
    looked = " or ".join(str(h / "ml-100k") for h in homes)
    raise DataError(f"MovieLens-100K not found in {looked}: run fetch-ml100k DEST (in the "
                    f"shared datasets folder) to download it, or pass the folder")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (*TABLE_SUFFIXES, *CRITEO_SUFFIXES):  # longest first: .csv.gz before .gz
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _find_spec(path: Path) -> Path:
    stem = path.name[: len(path.name) - len(_suffix(path))]
    candidates = [path.with_name(path.name + ".yaml"), path.with_name(stem + ".spec.yaml")]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"{path}: a table needs a field spec: pass spec=... or put one at "
                    f"{candidates[0].name} or {candidates[1].name} beside it")


def _bind(loader: Callable[..., Any], source: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The loader's full keyword options (defaults filled in: they belong in the cache key)."""
    params = [n for n in inspect.signature(loader).parameters][1:]
    for name in options:
        if name not in params:
            close = difflib.get_close_matches(name, params, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"{source}: unknown data option {name!r}{hint} (valid: "
                            f"{', '.join(params)})")
    bound = inspect.signature(loader).bind(source, **options)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k in params}


def load_data(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
              refresh: bool = False, **options: Any) -> CTRData:
    """Load a dataset by name or path, through the on-disk cache for real files.

    Args:
        source: ``"synthetic"``, ``"synthetic:<preset>"``, ``"ml-100k"`` (also
            ``"movielens-100k"``), a RecBole folder, a ``.csv``/``.parquet`` table or a
            Criteo ``.tsv``/``.txt``/``.gz`` file.
        cache_dir: Cache root (default ``$AUTODIM_CACHE`` or ``~/.cache/autodim/cache``).
        refresh: Rebuild the cache entry even if one exists.
        **options: Passed to the loader (:func:`~autodim.data.recbole.load_recbole`,
            :func:`~autodim.data.criteo.load_criteo`, :func:`~autodim.data.tabular.load_table`
            (``spec=``) or :func:`~autodim.data.synthetic.make_planted`).

    Returns:
        The encoded dataset (memory-mapped ids when read from the cache).

    Example:
        >>> data = load_data("synthetic:tiny", rows=2000)  # doctest: +SKIP
        >>> data = load_data("ml-100k", min_count=2)  # doctest: +SKIP
    """
    text = os.fspath(source)
    if text == "synthetic" or text.startswith("synthetic:"):
        from autodim.data.synthetic import make_planted  # lazy: a module of its own

        preset = text.partition(":")[2]
        return make_planted(preset, **options) if preset else make_planted(**options)

    path = Path(text).expanduser()
    if not path.exists() and text.lower() in ML100K_NAMES:
        path = find_ml100k()
    if not path.exists():
        raise DataError(f"data source {text!r}: no such file or folder, and not a known "
                        f"name. Accepted: {ACCEPTED_SOURCES}")
    path = path.resolve()

    if path.is_dir():
        if not any(path.glob("*.inter")):
            raise DataError(f"{path}: folder has no RecBole .inter file. Accepted: "
                            f"{ACCEPTED_SOURCES}")
        opts = _bind(build_recbole, path, options)
        inputs = list(recbole_files(path).values())
        loader, name, build = "recbole", path.name, build_recbole
    elif _suffix(path) in TABLE_SUFFIXES:
        if options.get("spec") is None:  # not setdefault: it would look for a spec file
            options["spec"] = _find_spec(path)  # beside the data even when one is given
        elif isinstance(options["spec"], (str, os.PathLike)):
            # Resolved: the same spec by a relative and an absolute path is one cache entry.
            options["spec"] = Path(options["spec"]).expanduser().resolve()
        opts = _bind(build_table, path, options)
        spec = opts["spec"]
        norm, _ = read_spec(spec)
        inputs = list(table_files(path, norm).values())
        if not isinstance(spec, dict):
            inputs.append(Path(spec))
        loader, name, build = "table", path.name, build_table
    elif _suffix(path) in CRITEO_SUFFIXES:
        opts = _bind(build_criteo, path, options)
        inputs = [path]
        loader, name, build = "criteo", path.name, build_criteo
    else:
        raise DataError(f"{path}: unrecognised file type {path.suffix!r}. Accepted: "
                        f"{ACCEPTED_SOURCES}")
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise DataError(f"{path}: input file(s) not found: {', '.join(missing)}")
    folder = cache_folder(cache_dir, loader, name, cache_key(loader, inputs, opts))
    return cached(lambda: build(path, **opts), folder, refresh=refresh)
