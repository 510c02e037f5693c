"""One Pareto code path, labels on log axes, identical plans once, α and history axes,
static images."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest

from autodim.viz.history import alpha_figure
from autodim.viz.pareto import pareto_figure, pareto_figure_from_frame, study_pareto_figure
from autodim.viz.trials import optimization_history_figure


def test_pareto_figure_is_the_report_figure_with_labels_on_the_log_axis(fake_study):
    result, _ = fake_study
    fig = pareto_figure(result)
    assert fig.to_json() == study_pareto_figure(result).to_json()
    assert result.figure().to_json() == fig.to_json()
    assert fig.layout.xaxis.type == "log"
    for label, nbytes in result.budgets.items():
        note = next(a for a in fig.layout.annotations if a.text == f"budget {label}")
        # plotly places annotations on a log axis in log10 units
        assert note.x == pytest.approx(math.log10(nbytes))
        assert note.xref == "x"


def test_identical_plans_are_one_point(fake_study):
    df = pd.DataFrame([
        {"trial": 0, "method": "darts", "val_auc": 0.67, "bytes": 7000, "feasible": True,
         "dims": {"a": 2, "b": 4}},
        {"trial": 1, "method": "darts", "val_auc": 0.67, "bytes": 7000, "feasible": True,
         "dims": {"a": 2, "b": 4}},
        {"trial": 2, "method": "darts", "val_auc": 0.66, "bytes": 6000, "feasible": True,
         "dims": {"a": 1, "b": 4}},
    ])
    fig = pareto_figure_from_frame(df)
    darts = next(t for t in fig.data if t.name == "darts")
    assert sorted(darts.customdata) == [0, 2]
    assert "same plan as trial(s) 1" in darts.text[list(darts.customdata).index(0)]
    front = next(t for t in fig.data if t.name.startswith("Pareto front"))
    assert list(front.x) == [6000, 7000]


def test_front_table_shows_an_identical_plan_once(fake_study, tmp_path):
    from autodim.study.result import StudyResult

    result, _ = fake_study
    copy = optuna.create_study(directions=["maximize", "minimize"],
                               storage=optuna.storages.InMemoryStorage())
    for k, v in result.study.user_attrs.items():
        copy.set_user_attr(k, v)
    best = result.front.iloc[-1]
    t = result.study.trials[int(best["trial"])]
    for _ in range(2):
        copy.add_trial(optuna.trial.create_trial(values=t.values, params=t.params,
                                                 distributions=t.distributions,
                                                 user_attrs=t.user_attrs,
                                                 constraints=t.constraints))
    table = StudyResult(copy, tmp_path).front_table()
    assert len([line for line in table.splitlines() if str(t.user_attrs["method"]) in line]) == 1
    assert len(StudyResult(copy, tmp_path).front_table(all_trials=True).splitlines()) == 4


def test_alpha_axis_follows_the_data(histories):
    h = dict(histories["darts"])
    h["alpha"] = {s: [[0.2 + 0.01 * (i % 3), 0.21, 0.22, 0.2, 0.19][:len(h["candidate_dims"])]
                      for i, _ in enumerate(rows)] for s, rows in h["alpha"].items()}
    fig = alpha_figure(h)
    lo, hi = fig.layout.yaxis.range
    assert 0.1 < lo < 0.2 and 0.22 < hi < 0.3  # not 0-1: moves of 0.01 stay visible


def test_optimisation_history_ticks_are_whole_trials(fake_study):
    result, _ = fake_study
    fig = optimization_history_figure(result.study)
    ax = fig.layout.xaxis
    assert ax.tickmode == "linear" and ax.tick0 == 0
    assert float(ax.dtick).is_integer() and ax.dtick >= 1


def _static_ready() -> bool:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    from autodim.viz.static import browser_path

    return browser_path() is not None and shutil.which(browser_path()) is not None


@pytest.mark.slow
@pytest.mark.skipif(not _static_ready(), reason="needs kaleido ([static]) and chromium")
def test_static_png_and_svg_of_the_pareto_figure(fake_study, tmp_path):
    from autodim.viz.static import write_images

    result, _ = fake_study
    fig = pareto_figure(result)
    png, svg = write_images([fig, fig], [tmp_path / "front.png", tmp_path / "front.svg"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = svg.read_text()
    assert text.lstrip().startswith("<svg") and "budget 6x" in text
    assert not list(tmp_path.glob(".*tmp"))  # written beside, renamed into place


def test_static_refuses_other_suffixes(tmp_path):
    from autodim.errors import ConfigError
    from autodim.viz.static import write_images

    with pytest.raises(ConfigError, match="must end in .png or .svg"):
        write_images([None], [tmp_path / "x.jpg"])


def test_static_renders_again_what_the_browser_dropped(tmp_path, monkeypatch):
    """kaleido reports a failed render by deleting the file it claimed, not by raising: the
    dropped figure is rendered again, and one that never renders is a one-line error with
    no file left behind."""
    import plotly.io as pio

    import autodim.viz.static as static
    from autodim.errors import ConfigError

    calls: list[list[str]] = []

    def flaky(figs, paths, format, width, height):  # noqa: A002 - plotly's keyword
        calls.append(list(paths))
        for i, p in enumerate(paths):
            if len(calls) == 1 and i == 1:
                os.unlink(p)  # the second figure's render "timed out"
            else:
                Path(p).write_bytes(b"img")

    monkeypatch.setattr(static, "check_static", lambda: None)
    monkeypatch.setattr(pio, "write_images", flaky)
    a, b = static.write_images(["f", "g"], [tmp_path / "a.png", tmp_path / "b.svg"])
    assert a.read_bytes() == b.read_bytes() == b"img"
    assert len(calls) == 2 and calls[1] == [calls[0][1]]  # only the dropped one again

    def never(figs, paths, format, width, height):  # noqa: A002
        for p in paths:  # as kaleido: claim the name, then delete it on failure
            Path(p).touch()
            os.unlink(p)

    monkeypatch.setattr(pio, "write_images", never)
    with pytest.raises(ConfigError, match="c.png: the browser rendered no image"):
        static.write_images(["f"], [tmp_path / "c.png"])
    assert not (tmp_path / "c.png").exists() and not list(tmp_path.glob(".*tmp"))
