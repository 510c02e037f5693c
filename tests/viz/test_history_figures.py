"""Searcher-history figures: from fake histories with the searchers' own keys, and from
real quick searches (sseds, darts) on tiny data."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autodim.searchers import get_searcher, list_searchers
from autodim.viz.history import (
    alpha_figure,
    blackbox_figure,
    density_figure,
    evolution_figure,
    history_figures,
    history_kind,
    saliency_figure,
    sparsity_figure,
    supernet_budget_figure,
)


def _titled(fig):
    """Every x and y axis in use has a title."""
    axes = [k for k in fig.layout if k.startswith(("xaxis", "yaxis"))]
    assert axes
    titled = [k for k in axes if fig.layout[k].title.text]
    assert {k[0] for k in titled} == {"x", "y"}
    return fig


def test_fake_histories_carry_the_keys_each_searcher_promises(histories):
    for name in list_searchers():
        assert name in histories, f"no fake history for searcher {name!r}"
        missing = set(get_searcher(name).history_keys) - set(histories[name])
        assert not missing, f"{name}: fake history lacks {missing}"


def test_alpha_figure_one_line_per_field_and_candidate(histories):
    h = histories["darts"]
    fig = _titled(alpha_figure(h))
    fields, cands = h["slots"], h["candidate_dims"]
    assert len(fig.data) == len(fields) * len(cands)
    first = fig.data[0]
    assert list(first.x) == h["steps"]
    assert list(first.y) == [row[0] for row in h["alpha"][fields[0]]]
    # one legend entry per candidate, panels titled with the chosen dim
    assert sum(bool(t.showlegend) for t in fig.data) == len(cands)
    titles = [a.text for a in fig.layout.annotations]
    assert f"{fields[0]} → {h['dims'][fields[0]]}" in titles


def test_supernet_budget_figure_shows_tau_only_for_autodim(histories):
    darts = _titled(supernet_budget_figure(histories["darts"]))
    auto = _titled(supernet_budget_figure(histories["autodim"]))
    assert [t.name for t in darts.data] == ["E[bytes]", "λ (budget multiplier)"]
    assert "τ (temperature)" in [t.name for t in auto.data]
    assert any(s.y0 == histories["darts"]["budget_bytes"] for s in darts.layout.shapes)


def test_sparsity_figure_one_line_per_field_and_snapshot_marks(histories):
    h = histories["pep"]
    fig = _titled(sparsity_figure(h))
    names = [t.name for t in fig.data]
    assert names[:len(h["fields"])] == h["fields"]
    assert "bytes of the mask" in names
    assert [s.x0 for s in fig.layout.shapes] == [40]


def test_saliency_figure_is_a_field_by_column_heatmap(histories):
    h = histories["sseds"]
    fig = _titled(saliency_figure(h))
    heat, kept = fig.data
    assert heat.type == "heatmap"
    assert [list(r) for r in heat.z] == h["saliency"]
    assert list(heat.y) == h["fields"]
    assert len(kept.x) == sum(len(c) for c in h["kept_columns"].values())
    raw = saliency_figure(h, raw=True)
    assert [list(r) for r in raw.data[0].z] == h["saliency_raw"]


def test_evolution_figure_per_generation(histories):
    h = histories["optembed"]
    fig = _titled(evolution_figure(h, budget_bytes=7600))
    best = next(t for t in fig.data if t.name == "generation best")
    assert list(best.x) == [g["gen"] for g in h["generations"]]
    assert list(best.y) == [g["best_auc"] for g in h["generations"]]
    assert any(t.name == "bytes of the generation best" for t in fig.data)


def test_blackbox_and_magprune_figures(histories):
    fig = _titled(blackbox_figure(histories["blackbox"]))
    assert len(fig.data[0].x) == 5  # the over-budget proposal is drawn apart
    assert any(t.name == "over budget (not trained)" for t in fig.data)
    dens = _titled(density_figure(histories["magprune"]))
    assert list(dens.data[0].y) == list(histories["magprune"]["density"].values())


def test_history_figures_dispatch_on_keys(histories):
    expected = {"darts": 2, "autodim": 2, "pep": 1, "sseds": 1, "optembed": 1,
                "blackbox": 1, "magprune": 1}
    for name, n in expected.items():
        figs = history_figures(histories[name], method=name)
        assert len(figs) == n, name
        assert all(f.layout.title.text.startswith(name) for f in figs)
    assert history_figures({}) == [] and history_kind(None) is None
    with pytest.raises(ValueError, match="alpha_figure needs history keys"):
        alpha_figure({"steps": []})


@pytest.fixture(scope="module")
def task(tiny_data):
    from autodim.budget import full_bytes, parse_budget
    from autodim.data.datamodule import CTRDataModule
    from autodim.searchers import SearchTask
    from autodim.task import TrainConfig

    cfg = TrainConfig(max_epochs=1, batch_size=256, seed=0, patience=1)
    return SearchTask(data=CTRDataModule(tiny_data, batch_size=256), D=8,
                      budget_bytes=parse_budget("6x", full_bytes(tiny_data.schema, 8)),
                      candidate_dims=(1, 2, 4, 8), train=cfg, seed=0)


@pytest.mark.parametrize("method", ["sseds", "darts"])
def test_figures_from_a_real_quick_search(task, method):
    from autodim.searchers import create_searcher
    from autodim.study.objective import _jsonable

    cls = get_searcher(method)
    settings = dict(cls.quick_settings)
    if method == "darts":
        # A few supernet steps (seconds on two shared cores), several α records.
        settings["log_every"] = 2
        task = replace(task, train=replace(task.train, max_steps=8))
    result = create_searcher(method, **settings).search(task)
    for history in (result.history, _jsonable(result.history)):  # live and as stored
        figs = history_figures(history, method=method)
        assert len(figs) == (2 if method == "darts" else 1)
        for fig in figs:
            _titled(fig)
            assert fig.data
    if method == "darts":
        fig = alpha_figure(result.history)
        assert len(fig.data) == task.schema.num_fields * len(task.candidate_dims)
        assert len(fig.data[0].x) == len(result.history["steps"]) > 1
    else:
        heat = saliency_figure(result.history).data[0]
        assert len(heat.y) == task.schema.num_fields and len(heat.z[0]) == task.D
