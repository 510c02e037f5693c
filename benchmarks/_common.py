"""Helpers shared by the benchmark scripts: data loading, result tables."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT.parent))


def load_datasets(names: Sequence[str], *, quick: bool, ml100k: str | None = None,
                  rows: int | None = None):
    """Yield ``(name, CTRData)``: ``planted`` and ``decoupled`` (built-in), ``tiny``
    (built-in, a few thousand rows, for smoke runs) and ``ml100k`` when available
    (``--ml100k DIR`` or
    ``$AUTODIM_ML100K``; :func:`default_ml100k` finds where ``fetch-ml100k`` puts it)."""
    from autodim.data.synthetic import make_planted

    for name in names:
        if name == "planted":
            yield name, make_planted("planted", rows=rows or (20_000 if quick else 200_000),
                                     seed=0)
        elif name == "decoupled":
            yield name, make_planted("decoupled", rows=rows or (20_000 if quick else 200_000),
                                     seed=0)
        elif name == "tiny":
            yield name, make_planted("tiny", rows=3_000 if quick else 6_000, seed=0)
        elif name == "ml100k":
            folder = ml100k or os.environ.get("AUTODIM_ML100K")
            if not folder:
                print("skipping ml100k: pass --ml100k DIR or set AUTODIM_ML100K", file=sys.stderr)
                continue
            from autodim.data import load_data

            yield name, load_data(folder)
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


def write_table(rows: list[dict[str, Any]], stem: str, *, title: str = "") -> str:
    """Save ``results/<stem>.csv`` and ``.md``; return the Markdown table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not rows:
        return "(no rows)"
    cols = list(rows[0].keys())
    for r in rows[1:]:
        cols += [c for c in r if c not in cols]
    with open(RESULTS / f"{stem}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
        return "" if v is None else str(v)

    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    md = "\n".join(lines) + "\n"
    (RESULTS / f"{stem}.md").write_text(md)
    return md
