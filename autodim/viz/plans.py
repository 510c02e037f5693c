"""Figures of dimension plans: per-field dims side by side, and where the bytes go.

Every function takes plain data (one plan, a list of plans or a ``{label: plan}`` mapping;
plans may also be given as their JSON dicts) and returns a ``plotly.graph_objects.Figure``.
On planted synthetic data the planted rank of each field (the allocation a good search
should approach) is drawn over the bars; :func:`planted_ranks` finds it in a dataset, a
schema, a study or a plain mapping.

Example:
    >>> from autodim.data.synthetic import make_planted          # doctest: +SKIP
    >>> from autodim.baselines import baseline_plan               # doctest: +SKIP
    >>> data = make_planted("tiny")                               # doctest: +SKIP
    >>> plans = {b: baseline_plan(b, data.schema, 8, 8000) for b in ("uniform", "mde")}
    ... # doctest: +SKIP
    >>> plan_dims_figure(plans, planted=data).show()              # doctest: +SKIP
    >>> field_bytes_figure(plans).show()                          # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

if TYPE_CHECKING:  # plotly and torch (via autodim.plan) stay out of import time
    import plotly.graph_objects as go

    from autodim.plan import DimensionPlan

__all__ = ["PALETTE", "planted_ranks", "as_plans", "plan_dims_figure", "field_bytes_figure",
           "field_bytes_treemap"]

#: Colours shared by every autodim figure (plotly's default qualitative palette), so a
#: method keeps its colour from one figure to the next when figures use the same order.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]

PlanLike = Union["DimensionPlan", Mapping[str, Any]]
Plans = Union[PlanLike, Sequence[PlanLike], Mapping[str, PlanLike]]


def planted_ranks(source: Any) -> dict[str, int] | None:
    """The planted rank per field, if ``source`` knows it; else ``None``.

    Args:
        source: A dataset (``CTRData``) or :class:`~autodim.data.schema.Schema` whose
            ``meta["planted_ranks"]`` is set (planted synthetic data), a
            :class:`~autodim.study.result.StudyResult` of a study on synthetic data, a plain
            ``{field: rank}`` mapping, or ``None``.

    Returns:
        ``{field: rank}`` or ``None`` when the data has no planted ranks (real data).
    """
    if source is None:
        return None
    if isinstance(source, Mapping):
        if "planted_ranks" in source:
            return planted_ranks(source["planted_ranks"])
        if source and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                          for v in source.values()):
            return {str(k): int(v) for k, v in source.items()}
        return None
    meta = getattr(source, "meta", None)
    if isinstance(meta, Mapping) and meta.get("planted_ranks"):
        return {str(k): int(v) for k, v in meta["planted_ranks"].items()}
    schema = getattr(source, "schema", None)
    if schema is not None and not callable(schema):
        found = planted_ranks(schema)
        if found:
            return found
    if hasattr(source, "study") and hasattr(source, "folder"):
        return _study_planted_ranks(source)
    return None


def _study_planted_ranks(result: Any) -> dict[str, int] | None:
    """Planted ranks of a study's dataset: from the study's attributes when the runner
    stored them, else from the synthetic preset its config names (cheap: no data drawn)."""
    attrs = result.study.user_attrs
    for holder in (attrs, result.manifest):
        if holder.get("planted_ranks"):
            return {str(k): int(v) for k, v in holder["planted_ranks"].items()}
    config = attrs.get("autodim_config") or result.manifest.get("config") or {}
    dataset = config.get("dataset") or {}
    if isinstance(dataset, str):
        dataset = {"source": dataset}
    source = str(dataset.get("source", ""))
    if not source.startswith("synthetic"):
        return None
    from autodim.data.synthetic import PRESETS

    preset = source.split(":", 1)[1] if ":" in source else "planted"
    if preset not in PRESETS:
        return None
    cfg = PRESETS[preset]
    ranks = dataset.get("ranks", cfg.ranks)
    names = dataset.get("names") or cfg.names or [f"f{i:02d}" for i in range(len(ranks))]
    return {str(n): int(r) for n, r in zip(names, ranks)}


def as_plans(plans: Plans) -> dict[str, "DimensionPlan"]:
    """Normalise one plan, a sequence or a mapping of plans (objects or JSON dicts) to
    ``{label: DimensionPlan}``; sequence items are labelled by their searcher's name."""
    from autodim.plan import DimensionPlan

    def one(p: PlanLike) -> DimensionPlan:
        return p if isinstance(p, DimensionPlan) else DimensionPlan.from_dict(dict(p))

    if isinstance(plans, DimensionPlan):
        return {_label(plans): plans}
    if isinstance(plans, Mapping):
        if "fields" in plans and "D" in plans:  # a single plan's JSON dict
            p = one(plans)
            return {_label(p): p}
        return {str(k): one(v) for k, v in plans.items()}
    out: dict[str, DimensionPlan] = {}
    for p in plans:
        p = one(p)
        label, n = _label(p), 2
        while label in out:  # two plans of the same searcher stay apart
            label, n = f"{_label(p)} ({n})", n + 1
        out[label] = p
    return out


def _label(plan: "DimensionPlan") -> str:
    return str((plan.searcher or {}).get("name") or "plan")


def _effective_dim(fp: Any, D: int) -> float:
    """Floats stored per row: the field's bytes over its rows. Frequency groups, sparse
    tables, pruned rows and hashing all land on one scale (a plain field reads ``dim``
    plus its small share of the ``d x D`` projection)."""
    from autodim.embeddings.tables import FLOAT_BYTES

    return fp.num_bytes(D) / (max(fp.vocab_size, 1) * FLOAT_BYTES)


def plan_dims_figure(plans: Plans, *, planted: Any = None, effective: bool = False,
                     title: str | None = None) -> "go.Figure":
    """Grouped bars of the per-field dims of one or more plans, planted ranks overlaid.

    Args:
        plans: One plan, a list or a ``{label: plan}`` mapping (see :func:`as_plans`).
        planted: Planted ranks or anything :func:`planted_ranks` reads (a dataset, a
            schema, a study); drawn as black dashes, capped at ``D`` like
            :func:`autodim.data.synthetic.planted_dims`.
        effective: Plot the floats actually stored per row (the field's bytes / 4 / rows:
            frequency groups, sparse tables, pruned rows and hashing on one scale)
            instead of each field's ``dim``.
        title: Figure title.

    Returns:
        A figure with one bar trace per plan (plus a ``planted rank`` trace if known);
        hovering a bar shows the field's compression and bytes.
    """
    import plotly.graph_objects as go

    named = as_plans(plans)
    fig = go.Figure()
    D = max((p.D for p in named.values()), default=1)
    order: list[str] = []
    for p in named.values():
        order += [f.name for f in p.fields if f.name not in order]
    for i, (label, plan) in enumerate(named.items()):
        rows = {r["field"]: r for r in plan.summary()}
        fields = [f for f in plan.fields]
        y = [_effective_dim(f, plan.D) if effective else f.dim for f in fields]
        custom = [[rows[f.name]["compression"], rows[f.name]["bytes"],
                   100 * rows[f.name]["share"], f.vocab_size] for f in fields]
        fig.add_trace(go.Bar(
            x=[f.name for f in fields], y=y, name=label, customdata=custom,
            marker_color=PALETTE[i % len(PALETTE)],
            hovertemplate=(f"<b>{label}</b> %{{x}}: dim %{{y:.3g}}<br>%{{customdata[3]:,}} rows"
                           ", %{customdata[0]}<br>%{customdata[1]:,} B "
                           "(%{customdata[2]:.1f}% of the plan)<extra></extra>")))
    ranks = planted_ranks(planted)
    if ranks:
        xs = [n for n in order if n in ranks]
        fig.add_trace(go.Scatter(
            x=xs, y=[min(ranks[n], D) for n in xs], mode="markers", name="planted rank",
            marker={"symbol": "line-ew-open", "size": 34, "color": "black",
                    "line": {"width": 3, "color": "black"}},
            hovertemplate="%{x}: planted rank %{y}<extra></extra>"))
    fig.add_hline(y=D, line_dash="dot", line_color="gray", annotation_text=f"D = {D}",
                  annotation_position="top right")
    fig.update_layout(
        title=title or ("Floats stored per row, per field" if effective
                        else "Embedding dim per field"),
        barmode="group", template="plotly_white", legend={"title": "plan"},
        xaxis={"title": {"text": "field"}, "categoryorder": "array", "categoryarray": order},
        yaxis={"title": {"text": "floats per row (bytes / 4 / rows)" if effective
                         else "embedding dim"}, "range": [0, D * 1.08]})
    return fig


def field_bytes_figure(plans: Plans, *, share: bool = False, budget_bytes: int | None = None,
                       title: str | None = None) -> "go.Figure":
    """Stacked horizontal bars: each plan one bar, split into its fields' bytes.

    Args:
        plans: One plan, a list or a ``{label: plan}`` mapping.
        share: Show each field's share of its plan (0-100 %) instead of bytes.
        budget_bytes: Draw this budget as a dashed line (default: the plans' own budget
            when they all share one). Ignored with ``share``.
        title: Figure title.

    Returns:
        A figure with one bar trace per field (stacked), a bar per plan.
    """
    import plotly.graph_objects as go

    named = as_plans(plans)
    labels = list(named)
    fields: list[str] = []
    for p in named.values():
        fields += [f.name for f in p.fields if f.name not in fields]
    fig = go.Figure()
    for i, name in enumerate(fields):
        nbytes = [named[lb].field_bytes().get(name, 0) for lb in labels]
        totals = [max(1, named[lb].num_bytes()) for lb in labels]
        pct = [100 * b / t for b, t in zip(nbytes, totals)]
        fig.add_trace(go.Bar(
            y=labels, x=pct if share else nbytes, name=name, orientation="h",
            customdata=list(zip(nbytes, pct)), marker_color=PALETTE[i % len(PALETTE)],
            hovertemplate=(f"%{{y}}: <b>{name}</b> %{{customdata[0]:,}} B "
                           "(%{customdata[1]:.1f}%)<extra></extra>")))
    if not share:
        budgets = {p.budget_bytes for p in named.values()}
        budget = budget_bytes if budget_bytes is not None else (
            budgets.pop() if len(budgets) == 1 else None)
        if budget:
            fig.add_vline(x=budget, line_dash="dash", line_color="crimson",
                          annotation_text="budget", annotation_position="top")
    fig.update_layout(
        title=title or ("Share of the embedding bytes per field" if share
                        else "Embedding bytes per field"),
        barmode="stack", template="plotly_white",
        legend={"title": "field", "traceorder": "normal"},
        xaxis={"title": {"text": "share of the plan's bytes (%)" if share
                         else "embedding bytes"}},
        yaxis={"title": {"text": "plan"}, "autorange": "reversed"},
        height=max(260, 110 + 46 * len(labels)))
    return fig


def field_bytes_treemap(plan: PlanLike, *, title: str | None = None) -> "go.Figure":
    """A treemap of one plan's bytes: a tile per field, sized by its bytes.

    Dropped fields (0 bytes) have no area; they are named in the title's subtitle so the
    picture does not hide them.
    """
    import plotly.graph_objects as go

    (label, p), = as_plans(plan).items()
    rows = p.summary()
    kept = [r for r in rows if r["bytes"] > 0]
    dropped = [r["field"] for r in rows if r["bytes"] == 0]
    root = f"{label}: {p.num_bytes():,} B"
    # Tiles keep the colour each field has in field_bytes_figure (schema order).
    colour = {f.name: PALETTE[i % len(PALETTE)] for i, f in enumerate(p.fields)}
    fig = go.Figure(go.Treemap(
        marker={"colors": ["#eeeeee"] + [colour[r["field"]] for r in kept]},
        labels=[root] + [r["field"] for r in kept], parents=[""] + [root] * len(kept),
        values=[p.num_bytes()] + [r["bytes"] for r in kept], branchvalues="total",
        customdata=[["", "", ""]] + [[r["dim"], r["compression"], f"{100 * r['share']:.1f}%"]
                                     for r in kept],
        texttemplate="<b>%{label}</b><br>%{value:,} B<br>%{customdata[2]}",
        hovertemplate=("<b>%{label}</b>: %{value:,} B<br>dim %{customdata[0]}, "
                       "%{customdata[1]}<extra></extra>")))
    sub = f" (dropped: {', '.join(dropped)})" if dropped else ""
    fig.update_layout(title=title or f"Where the bytes of {label} go{sub}",
                      template="plotly_white", margin={"t": 60, "l": 10, "r": 10, "b": 10})
    return fig
