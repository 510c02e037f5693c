"""The HTML report: sections, figures, plotly embedded once, atomic file, CLI."""

from __future__ import annotations

import re

import pytest

from autodim.viz.report import build_report, choose_trial, report_sections, write_report


def _count_figures(page: str) -> int:
    return int(re.search(r"name='autodim-figures' content='(\d+)'", page).group(1))


@pytest.fixture(scope="module")
def page(fake_study):
    result, _ = fake_study
    return build_report(result)


def test_report_holds_every_figure_and_plotly_once(page, fake_study):
    result, _ = fake_study
    n = _count_figures(page)
    figs = [f for s in report_sections(result) for f in s.figures]
    assert n == len(figs)
    # Pareto, dims, bytes, treemap, 4 methods' dynamics (darts 2), history, importances
    assert n >= 10
    assert len(re.findall(r'Plotly\.newPlot\(\s*"fig\d+"', page)) == n
    assert len(re.findall(r'id="fig\d+"', page)) == n
    # plotly.js inline exactly once, no script loaded from the network (opens offline)
    assert page.count("plotly.js v") == 1
    assert not re.search(r"<script[^>]+src=", page)


def test_report_sections_and_chosen_plan(page, fake_study):
    result, _ = fake_study
    chosen = choose_trial(result)
    df = result.trials_dataframe()
    ok = df[(df.state == "COMPLETE") & (df.bytes <= result.budgets["6x"])]
    assert chosen == int(ok.sort_values("val_auc", ascending=False).iloc[0]["trial"])
    for heading in ("Chosen plan", "Pareto front", "Plans field by field", "Search dynamics",
                    "Optuna", "Study settings"):
        assert f"{heading}" in page
    assert f"<b>trial {chosen}</b>" in page
    plan = result.plan(chosen)
    for row in plan.summary():
        assert f"<td>{row['field']}</td>" in page
    assert "synthetic:tiny" in page  # settings table


def test_report_with_a_budget_nothing_fits(fake_study):
    result, _ = fake_study
    assert choose_trial(result, 10) is None
    page = build_report(result, budget=10)
    assert "No complete trial fits" in page
    assert _count_figures(page) >= 1


def test_write_report_atomically_and_cli(fake_study, tmp_path, monkeypatch):
    result, _ = fake_study
    path = write_report(result, tmp_path / "r.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not list(tmp_path.glob("*.tmp*"))  # no temp file left behind
    import autodim.study.result as sr
    from autodim.cli import main

    assert main(["report", str(tmp_path / "nowhere")]) == 2  # a one-line error
    # the CLI resolves the study with load_study; hand it the fake one
    monkeypatch.setattr(sr, "load_study", lambda *a, **k: result)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "cli.html")]) == 0
    assert _count_figures((tmp_path / "cli.html").read_text(encoding="utf-8")) >= 10


def test_report_of_a_real_tiny_study_from_the_command_line(tmp_path):
    """End to end: `autodim search` a tiny study, then `autodim report` it."""
    import yaml

    from autodim.cli import main

    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump({
        "name": "tiny", "dataset": "synthetic:tiny", "D": 8, "methods": ["sseds"],
        "budget": "6x", "n_trials": 2, "baselines": ["full", "uniform"],
        "train": {"epochs": 1}, "search_train": {"epochs": 1}, "output": str(tmp_path)}))
    assert main(["-q", "search", str(study)]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(study), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    # Pareto, dims, bytes, treemap, sseds saliency, optimisation history at least
    assert _count_figures(page) >= 6
    assert "saliency" in page and "planted rank" in page
    assert main(["report", str(tmp_path / "tiny"), "--budget", "2x"]) == 0  # the folder
    assert (tmp_path / "tiny" / "report.html").is_file()


def test_report_of_a_study_without_trials(tmp_path):
    import optuna

    from autodim.study.result import StudyResult

    study = optuna.create_study(directions=["maximize", "minimize"],
                                storage=optuna.storages.InMemoryStorage())
    study.set_user_attr("autodim_space", {"budgets": {"10x": 1000},
                                          "objectives": ["val_auc", "bytes"]})
    page = build_report(StudyResult(study, tmp_path))
    assert _count_figures(page) == 1  # the (empty) Pareto chart
    assert "No complete trial fits" in page and "No complete search trial yet" in page
