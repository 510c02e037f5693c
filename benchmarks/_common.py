"""What the benchmark scripts share: their command line (``--quick`` and friends), the
quiet single-thread set-up, data loading, per-field dims as text and the result files
(CSV + Markdown table)."""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT.parent))


def load_datasets(names: Sequence[str], *, quick: bool, ml100k: str | None = None,
                  rows: int | None = None):
    """Yield ``(name, CTRData)``: any planted preset (``planted``, ``decoupled``,
    ``criteo_kaggle``: built in, data seed 0, ``rows`` rows), ``tiny``
    (built-in, a few thousand rows, for smoke runs) and ``ml100k`` when available
    (``--ml100k DIR`` or
    ``$AUTODIM_ML100K``; :func:`default_ml100k` finds where ``fetch-ml100k`` puts it)."""
    from autodim.data.synthetic import PRESETS, make_planted

    for name in names:
        if name == "tiny":
            yield name, make_planted("tiny", rows=3_000 if quick else 6_000, seed=0)
        elif name == "ml100k":
            folder = ml100k or os.environ.get("AUTODIM_ML100K")
            if not folder:
                print("skipping ml100k: pass --ml100k DIR or set AUTODIM_ML100K", file=sys.stderr)
                continue
            from autodim.data import load_data

            yield name, load_data(folder)
        elif name in PRESETS:
            yield name, make_planted(name, rows=rows or (20_000 if quick else 200_000), seed=0)
        else:
            raise SystemExit(f"unknown dataset {name!r}")


def default_ml100k() -> str | None:
    """The MovieLens-100K folder ``fetch-ml100k`` filled (``~/.cache/autodim/ml-100k``), or
    ``None``. The data stays there: its licence forbids copying it into the repo."""
    from autodim.data.sources import find_ml100k
    from autodim.errors import DataError

    try:
        return str(find_ml100k())
    except DataError:
        return None


def parser(description: str, *, quick: str = "a small run for the test suite",
           ml100k: str | None = None, threads: str | None = None,
           allocator: bool = False) -> argparse.ArgumentParser:
    """The arguments every script has: ``--quick`` (help ``quick``); ``--ml100k DIR`` when
    ``ml100k`` (its help) is given; ``--threads N`` (default 1) when ``threads`` is;
    ``--allocator default|tuned`` with ``allocator`` (see :func:`apply_allocator`)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help=quick)
    if ml100k is not None:
        ap.add_argument("--ml100k", metavar="DIR", default=None, help=ml100k)
    if threads is not None:
        ap.add_argument("--threads", type=int, default=1, help=threads)
    if allocator:
        ap.add_argument("--allocator", default="default", choices=("default", "tuned"),
                        help="glibc's allocator as is, or tuned as autodim predict runs it "
                             "(autodim.tune_allocator; results in <stem>_tuned.*)")
    return ap


def apply_allocator(choice: str) -> str:
    """Tune the allocator when ``choice`` is ``"tuned"``; the results-file suffix: ``""``,
    ``"_tuned"``, or ``"_untuned"`` where the C library is not glibc."""
    if choice != "tuned":
        return ""
    from autodim.runtime import tune_allocator

    return "_tuned" if tune_allocator() else "_untuned"


def quiet(threads: int | None = 1) -> None:
    """Silence warnings and Lightning's logs; ``threads`` torch CPU threads (``None`` or 0:
    torch's default; 1 keeps a shared 2-core machine from oversubscribing)."""
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if threads:
        torch.set_num_threads(threads)


def results_stem(name: str, quick: bool) -> str:
    """The results file stem: quick runs write ``<name>_quick.*`` (git-ignored), so they
    never overwrite the committed full results."""
    return f"{name}_quick" if quick else name


def dims_text(plan, sep: str = " ", *, sparse: bool = False, detail: bool = False) -> str:
    """The plan's per-field dims in field order; ``sparse``: a sparse field as its stored
    values per row (``0.4s``) instead of its nominal dim. ``detail``: every field's form,
    ``s0.42`` (stored values per row) for sparse fields, ``d/hN`` or ``d/qN`` for hashed
    ones, ``4+2+1`` for frequency groups and ``dK`` with K kept rows for row-pruned ones."""
    if not detail:
        return sep.join(f"{f.sparse['nnz'] / f.vocab_size:.1f}s"
                        if sparse and f.sparse is not None else str(f.dim) for f in plan.fields)
    out = []
    for f in plan.fields:
        if f.sparse is not None:
            out.append(f"s{f.sparse['nnz'] / f.vocab_size:.2f}")
        elif f.hashing is not None:
            out.append(f"{f.dim}/{f.hashing['method'][0]}{f.hashing['buckets']}")
        elif f.frequency_groups:
            out.append("+".join(str(g["dim"]) for g in f.frequency_groups))
        elif f.row_mask is not None:
            out.append(f"{f.dim}r{f.row_mask['kept']}")
        else:
            out.append(str(f.dim))
    return sep.join(out)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
    return "" if v is None else str(v)


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    cols = list(rows[0].keys())
    for r in rows[1:]:
        cols += [c for c in r if c not in cols]
    return cols


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, *,
                   title: str = "", cell: Callable[[Any], str] = _cell) -> str:
    """A Markdown table of ``rows`` (dicts; columns: every key, in first-seen order)."""
    cols = list(columns or _columns(rows))
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV :func:`write_csv` wrote (``[]`` when the file does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]],
              columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as CSV (atomically; columns as :func:`markdown_table`)."""
    from autodim._io import atomic_write_text

    cols = list(columns or _columns(rows))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows([{c: r.get(c) for c in cols} for r in rows])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())
    return path


def write_table(rows: list[dict[str, Any]], stem: str, *, title: str = "",
                markdown: bool = True) -> str:
    """Save ``results/<stem>.csv`` and (``markdown``) ``.md``; return the Markdown table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not rows:
        return "(no rows)"
    write_csv(RESULTS / f"{stem}.csv", rows)
    md = markdown_table(rows, title=title)
    if markdown:
        (RESULTS / f"{stem}.md").write_text(md)
    return md
