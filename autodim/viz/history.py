"""Figures of a searcher's dynamics, drawn from ``SearchResult.history``.

Each searcher documents the keys it fills (``Searcher.history_keys``); the figures read
those keys and nothing else, so a history loaded back from a study's
``trials/00007/history.json`` draws the same as the live one:

==========================  ============================================================
searcher                    figure
==========================  ============================================================
``darts`` / ``autodim``     :func:`alpha_figure` (α per field over steps) and
                            :func:`supernet_budget_figure` (E[bytes] vs budget, λ, τ)
``pep``                     :func:`sparsity_figure` (share of zeros per field over steps)
``sseds``                   :func:`saliency_figure` (field × column saliency, kept columns)
``optembed``                :func:`evolution_figure` (fitness and bytes per generation)
``blackbox``                :func:`blackbox_figure` (validation AUC of each candidate)
``magprune``                :func:`density_figure` (kept share of each field's table)
==========================  ============================================================

:func:`history_figures` picks the right ones for any history.

Example:
    >>> plan, result = autodim.search_plan("darts", "synthetic:tiny", D=8)  # doctest: +SKIP
    >>> alpha_figure(result.history).show()                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from autodim.viz.plans import PALETTE

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["alpha_figure", "supernet_budget_figure", "sparsity_figure", "saliency_figure",
           "evolution_figure", "blackbox_figure", "density_figure", "history_kind",
           "history_figures", "load_trial_history"]


def _need(history: Mapping[str, Any], keys: Sequence[str], what: str) -> None:
    missing = [k for k in keys if k not in history]
    if missing:
        raise ValueError(f"{what} needs history keys {list(keys)}; missing {missing} (keys "
                         f"present: {sorted(history)})")


def _num(v: Any) -> float | None:
    """JSON turns NaN into null; plotly wants None for gaps either way."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# -- darts / autodim ------------------------------------------------------------------------
def alpha_figure(history: Mapping[str, Any], *, fields: Sequence[str] | None = None,
                 cols: int = 4, title: str | None = None) -> "go.Figure":
    """Architecture weights α of every field (or frequency-group slot) over the search.

    One panel per slot, one line per candidate dim; the panel title names the dim the
    search settled on (the plan's dim after the budget projection where known, else the
    argmax of α).

    Args:
        history: A ``darts``/``autodim`` history (keys ``steps``, ``alpha``,
            ``candidate_dims``).
        fields: Slots to draw (default: all, in the search's order).
        cols: Panels per row.
        title: Figure title.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _need(history, ("steps", "alpha", "candidate_dims"), "alpha_figure")
    steps = list(history["steps"])
    cands = [int(c) for c in history["candidate_dims"]]
    slots = list(fields) if fields is not None else list(history.get("slots")
                                                          or history["alpha"])
    chosen = {**(history.get("argmax_dims") or {}), **(history.get("dims") or {})}
    cols = max(1, min(cols, len(slots)))
    nrows = math.ceil(len(slots) / cols)
    fig = make_subplots(rows=nrows, cols=cols, shared_yaxes=True,
                        subplot_titles=[f"{s} → {chosen[s]}" if s in chosen else s
                                        for s in slots],
                        vertical_spacing=min(0.3 / max(nrows - 1, 1), 0.6 / nrows),
                        horizontal_spacing=0.04)
    # A search shorter than log_every records one point: markers keep it visible.
    mode = "lines" if len(steps) > 20 else "lines+markers"
    for i, slot in enumerate(slots):
        trace = history["alpha"][slot]
        r, c = i // cols + 1, i % cols + 1
        for k, d in enumerate(cands):
            fig.add_trace(go.Scatter(
                x=steps, y=[row[k] for row in trace], mode=mode, name=f"d = {d}",
                legendgroup=f"d{d}", showlegend=i == 0,
                line={"color": PALETTE[k % len(PALETTE)]},
                hovertemplate=f"{slot}, d = {d}: α %{{y:.3f}} at step %{{x}}<extra></extra>"),
                row=r, col=c)
    # The y range follows the data (not fixed to 0-1): weights moving within a few
    # hundredths would otherwise look flat.
    vals = [v for slot in slots for row in history["alpha"][slot] for v in row
            if v is not None and math.isfinite(v)]
    if vals:
        lo, hi = min(vals), max(vals)
        pad = max(0.1 * (hi - lo), 0.005)
        fig.update_yaxes(range=[max(0.0, lo - pad), hi + pad])
    # Titles only on the bottom panel of each column: between rows they would collide
    # with the next row's panel titles.
    for i in range(len(slots)):
        below = i + cols < len(slots)
        fig.update_xaxes(title_text=None if below else "step", row=i // cols + 1,
                         col=i % cols + 1)
    fig.update_yaxes(title_text="α", col=1)
    tau = " (Gumbel-softmax)" if history.get("tau") else ""
    fig.update_layout(title=title or f"Architecture weights α per field over the search{tau}",
                      template="plotly_white", legend={"title": "candidate"},
                      height=max(320, 230 * nrows), hovermode="closest")
    return fig


def supernet_budget_figure(history: Mapping[str, Any], *, title: str | None = None
                           ) -> "go.Figure":
    """Expected bytes of the supernet's plan against the budget, with the Lagrange
    multiplier λ (and the Gumbel temperature τ for ``autodim``) on a second axis."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _need(history, ("steps", "expected_bytes", "multiplier"), "supernet_budget_figure")
    steps = list(history["steps"])
    mode = "lines" if len(steps) > 20 else "lines+markers"
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=steps, y=[_num(v) for v in history["expected_bytes"]],
                             mode=mode, name="E[bytes]", line={"color": PALETTE[0]}),
                  secondary_y=False)
    fig.add_trace(go.Scatter(x=steps, y=[_num(v) for v in history["multiplier"]], mode=mode,
                             name="λ (budget multiplier)",
                             line={"color": PALETTE[3], "dash": "dash"}), secondary_y=True)
    if history.get("tau"):
        fig.add_trace(go.Scatter(x=steps, y=[_num(v) for v in history["tau"]], mode=mode,
                                 name="τ (temperature)",
                                 line={"color": PALETTE[2], "dash": "dot"}), secondary_y=True)
    budget = history.get("budget_bytes")
    if budget:
        fig.add_hline(y=budget, line_dash="dash", line_color="crimson",
                      annotation_text="budget", annotation_position="top left")
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="expected bytes of the plan", secondary_y=False)
    fig.update_yaxes(title_text="λ, τ", secondary_y=True, rangemode="tozero")
    fig.update_layout(title=title or "Supernet: expected bytes vs budget",
                      template="plotly_white")
    return fig


# -- pep ------------------------------------------------------------------------------------
def sparsity_figure(history: Mapping[str, Any], *, title: str | None = None) -> "go.Figure":
    """PEP: share of zeroed entries of each field's table over training steps, the mask's
    bytes on a second axis and a dotted line where each byte target was snapshotted."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _need(history, ("steps", "sparsity"), "sparsity_figure")
    steps = list(history["steps"])
    mode = "lines" if len(steps) > 20 else "lines+markers"
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for i, (name, trace) in enumerate(history["sparsity"].items()):
        fig.add_trace(go.Scatter(x=steps, y=[_num(v) for v in trace], mode=mode, name=name,
                                 line={"color": PALETTE[i % len(PALETTE)]},
                                 hovertemplate=f"{name}: %{{y:.1%}} zero at step %{{x}}"
                                               "<extra></extra>"), secondary_y=False)
    if history.get("mask_bytes"):
        fig.add_trace(go.Scatter(x=steps, y=[_num(v) for v in history["mask_bytes"]],
                                 mode=mode, name="bytes of the mask",
                                 line={"color": "black", "dash": "dash"}), secondary_y=True)
    for target, snap in (history.get("snapshots") or {}).items():
        if isinstance(snap, Mapping) and snap.get("step") is not None:
            fig.add_vline(x=snap["step"], line_dash="dot", line_color="gray",
                          annotation_text=f"target {target} B", annotation_position="top")
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="sparsity (share of zero entries)", range=[0, 1.02],
                     secondary_y=False)
    fig.update_yaxes(title_text="bytes of the mask", secondary_y=True, rangemode="tozero")
    fig.update_layout(title=title or "PEP: sparsity per field over training",
                      template="plotly_white", legend={"title": "field"})
    return fig


# -- sseds ----------------------------------------------------------------------------------
def saliency_figure(history: Mapping[str, Any], *, raw: bool = False,
                    title: str | None = None) -> "go.Figure":
    """SSEDS: saliency of every (field, column) as a heatmap, the kept columns circled.

    Args:
        history: An ``sseds`` history (keys ``fields``, ``saliency``, ``kept_columns``).
        raw: Plot the raw mean ``|∂L/∂mask|`` (``saliency_raw``) instead of the normalised
            saliency the search ranked.
        title: Figure title.
    """
    import plotly.graph_objects as go

    _need(history, ("fields", "saliency_raw" if raw else "saliency", "kept_columns"),
          "saliency_figure")
    fields = list(history["fields"])
    z = history["saliency_raw" if raw else "saliency"]
    ncols = max((len(row) for row in z), default=0)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(ncols)), y=fields, colorscale="Viridis",
        colorbar={"title": {"text": "saliency"}},
        hovertemplate="%{y}, column %{x}: saliency %{z:.3g}<extra></extra>"))
    kept = history["kept_columns"]
    xs = [c for f in fields for c in kept.get(f, [])]
    ys = [f for f in fields for _ in kept.get(f, [])]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="kept column",
                             marker={"symbol": "circle-open", "size": 12, "color": "white",
                                     "line": {"width": 2}},
                             hovertemplate="%{y}: column %{x} kept<extra></extra>"))
    fig.update_layout(title=title or "SSEDS: saliency per field and column (kept circled)",
                      template="plotly_white", legend={"orientation": "h", "y": -0.2},
                      xaxis={"title": {"text": "embedding column"}, "dtick": 1},
                      yaxis={"title": {"text": "field"}, "autorange": "reversed"},
                      height=max(300, 120 + 28 * len(fields)))
    return fig


# -- optembed -------------------------------------------------------------------------------
def evolution_figure(history: Mapping[str, Any], *, budget_bytes: int | None = None,
                     title: str | None = None) -> "go.Figure":
    """OptEmbed's evolution: best, mean and best-so-far fitness (validation AUC of the
    sub-nets with supernet weights) per generation; the generation best's bytes on a
    second axis against the budget."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _need(history, ("generations",), "evolution_figure")
    gens = list(history["generations"])
    x = [g.get("gen", i) for i, g in enumerate(gens)]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for key, name, style in (("best_auc", "generation best", {"color": PALETTE[0]}),
                             ("mean_auc", "generation mean", {"color": PALETTE[0],
                                                               "dash": "dot"}),
                             ("best_ever_auc", "best so far", {"color": PALETTE[2]})):
        fig.add_trace(go.Scatter(x=x, y=[_num(g.get(key)) for g in gens], mode="lines+markers",
                                 name=name, line=style), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[_num(g.get("best_bytes")) for g in gens],
                             mode="lines+markers", name="bytes of the generation best",
                             line={"color": PALETTE[1], "dash": "dash"}), secondary_y=True)
    best = history.get("best") or {}
    budget = budget_bytes if budget_bytes is not None else history.get("budget_bytes")
    if budget:
        fig.add_hline(y=budget, line_dash="dash", line_color="crimson", secondary_y=True,
                      annotation_text="budget", annotation_position="bottom right")
    fig.update_xaxes(title_text="generation")
    fig.update_yaxes(title_text="fitness (validation AUC)", secondary_y=False)
    fig.update_yaxes(title_text="bytes", secondary_y=True)
    extra = f" (best {best['auc']:.4f} at {best['bytes']:,} B)" if (
        _num(best.get("auc")) is not None and best.get("bytes")) else ""
    fig.update_layout(title=title or f"OptEmbed: evolution of per-field dims{extra}",
                      template="plotly_white")
    return fig


# -- blackbox -------------------------------------------------------------------------------
def blackbox_figure(history: Mapping[str, Any], *, title: str | None = None) -> "go.Figure":
    """Blackbox: the validation AUC of each candidate Optuna proposed, coloured by bytes
    (proposals over budget that were not trained are crosses at the bottom)."""
    import plotly.graph_objects as go

    _need(history, ("trials",), "blackbox_figure")
    recs = list(history["trials"])
    ok = [(i, r) for i, r in enumerate(recs) if _num(r.get("val_auc")) is not None]
    out = [(i, r) for i, r in enumerate(recs) if _num(r.get("val_auc")) is None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[i for i, _ in ok], y=[r["val_auc"] for _, r in ok], mode="markers",
        name="candidate",
        marker={"color": [r.get("bytes") for _, r in ok], "colorscale": "Viridis",
                "size": 10, "showscale": True, "colorbar": {"title": {"text": "bytes"}},
                "symbol": ["circle" if r.get("trained", True) else "circle-open"
                           for _, r in ok]},
        customdata=[[r.get("bytes"), json.dumps(r.get("dims"))] for _, r in ok],
        hovertemplate=("candidate %{x}: val AUC %{y:.4f}<br>%{customdata[0]:,} B<br>"
                       "%{customdata[1]}<extra></extra>")))
    # Open circles: dims already trained once (the searcher reuses the cached AUC).
    if ok:
        best, top = [], -math.inf
        for _, r in ok:
            top = max(top, r["val_auc"])
            best.append(top)
        fig.add_trace(go.Scatter(x=[i for i, _ in ok], y=best, mode="lines",
                                 line={"shape": "hv", "color": "black"}, name="best so far"))
    if out:
        low = min([r["val_auc"] for _, r in ok], default=0.5)
        fig.add_trace(go.Scatter(x=[i for i, _ in out], y=[low] * len(out), mode="markers",
                                 marker={"symbol": "x", "color": "crimson"},
                                 name="over budget (not trained)"))
    fig.update_layout(title=title or "Blackbox: validation AUC of each candidate",
                      template="plotly_white", legend={"orientation": "h", "y": -0.25},
                      xaxis={"title": {"text": "candidate (Optuna trial)"}},
                      yaxis={"title": {"text": "validation AUC"}})
    return fig


# -- magprune -------------------------------------------------------------------------------
def density_figure(history: Mapping[str, Any], *, title: str | None = None) -> "go.Figure":
    """Magnitude pruning: the share of each field's table that survives."""
    import plotly.graph_objects as go

    _need(history, ("density",), "density_figure")
    dens = history["density"]
    nnz = history.get("nnz") or {}
    fig = go.Figure(go.Bar(x=list(dens), y=[_num(v) for v in dens.values()],
                           customdata=[nnz.get(n) for n in dens],
                           marker_color=PALETTE[0],
                           hovertemplate="%{x}: %{y:.1%} kept (%{customdata:,} values)"
                                         "<extra></extra>"))
    fig.update_layout(title=title or "Magnitude pruning: share of each table kept",
                      template="plotly_white", xaxis={"title": {"text": "field"}},
                      yaxis={"title": {"text": "kept share (density)"}, "range": [0, 1.02]})
    return fig


# -- dispatch -------------------------------------------------------------------------------
#: history kind -> (keys that identify it, figure functions)
_KINDS: dict[str, tuple[tuple[str, ...], tuple[Any, ...]]] = {
    "supernet": (("alpha", "steps"), (alpha_figure, supernet_budget_figure)),
    "pep": (("sparsity", "steps"), (sparsity_figure,)),
    "sseds": (("saliency", "kept_columns"), (saliency_figure,)),
    "optembed": (("generations",), (evolution_figure,)),
    "blackbox": (("trials", "best_dims"), (blackbox_figure,)),
    "magprune": (("density",), (density_figure,)),
}


def history_kind(history: Mapping[str, Any] | None) -> str | None:
    """Which searcher family a history comes from (``supernet`` for darts/autodim), read
    from its keys; ``None`` for an empty or unknown history."""
    for kind, (keys, _) in _KINDS.items():
        if history and all(k in history for k in keys):
            return kind
    return None


def history_figures(history: Mapping[str, Any] | None, *, method: str | None = None
                    ) -> list["go.Figure"]:
    """Every figure that fits ``history`` (empty for baselines and unknown searchers).

    Args:
        history: A ``SearchResult.history`` (or its JSON from a study's trial folder).
        method: The searcher's name, put into the figures' titles.
    """
    kind = history_kind(history)
    if kind is None:
        return []
    figs = []
    for make in _KINDS[kind][1]:
        try:
            fig = make(history)
        except (ValueError, KeyError, TypeError, IndexError):
            # A history that lacks a trace (an older or partial one) loses one picture,
            # never the whole report.
            continue
        if method:
            fig.update_layout(title_text=f"{method}: {fig.layout.title.text}")
        figs.append(fig)
    return figs


def load_trial_history(result: Any, number: int) -> dict[str, Any] | None:
    """The searcher history a study kept for trial ``number`` (``None`` if it has none:
    baselines, failed trials, or a study folder without the trial files)."""
    rel = result.trial(number).user_attrs.get("history_file")
    if not rel:
        return None
    path = Path(result.folder) / rel
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
