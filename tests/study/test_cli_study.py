"""CLI: ``autodim search`` / ``pareto`` / ``export`` via ``autodim.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from autodim.cli import main

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli_study")
    space = {"candidate_dims": [1, 2, 4, 8],
             "methods": {"blackbox": {"params": {"n_candidates": 2, "max_batches": 4}}},
             "memcom": {"inflate": {"type": "categorical", "choices": [1.0, 2.0]},
                        "min_rows": 100}}
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    path = folder / "cli.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cli", "dataset": {"source": "synthetic:tiny", "rows": 3000}, "D": 8,
        "methods": ["blackbox"], "search_space": "space.yaml", "budget": "6x", "n_trials": 2,
        "baselines": ["full", "uniform", "hash"], "train": {"epochs": 1, "batch_size": 256},
        "search_train": {"epochs": 1, "batch_size": 256}, "output": "out"}))
    assert main(["-q", "search", str(path)]) == 0
    return path


def test_search_prints_the_front_and_writes_files(study_file, capsys):
    folder = study_file.parent / "out" / "cli"
    for name in ("study.journal", "study.json", "pareto.csv", "pareto.json"):
        assert (folder / name).is_file(), name
    # --resume with nothing left to do reruns nothing and prints the same front.
    assert main(["search", str(study_file), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and ("blackbox" in out or "baseline:" in out)
    assert "compression" in out


def test_pareto_writes_html(study_file, tmp_path, capsys):
    html = tmp_path / "front.html"
    assert main(["pareto", str(study_file), "--html", str(html), "--all"]) == 0
    assert html.is_file() and "plotly" in html.read_text()[:100000].lower()
    out = capsys.readouterr().out
    assert "val AUC" in out and "baseline:full" in out  # --all lists infeasible trials too


def test_export_best_under_and_pareto(study_file, tmp_path):
    out = tmp_path / "exp"
    assert main(["export", str(study_file), "--best-under", "6x", "--out", str(out)]) == 0
    for name in ("plan.json", "weights.safetensors", "torchrec.json", "fuxictr.yaml",
                 "model.json", "pareto.csv", "pareto.json"):
        assert (out / name).is_file(), name
    assert main(["inspect", str(out / "plan.json")]) == 0
    assert main(["inspect", str(out)]) == 0
    front = tmp_path / "front"
    assert main(["export", str(study_file.parent / "out" / "cli"), "--pareto", "--out",
                 str(front)]) == 0
    recs = json.loads((front / "pareto.json").read_text())["trials"]
    on_front = [r["trial"] for r in recs if r["rank"] == 0]
    assert on_front and all((front / f"trial_{n}" / "plan.json").is_file() for n in on_front)
    assert all({"params", "values", "feasible", "rank"} <= set(r) for r in recs)


def test_single_run_search_writes_a_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["search", "--method", "blackbox", "--data", "synthetic:tiny", "--rows", "3000",
                 "--dim", "8", "--dims", "1,2,4,8", "--budget", "6x", "--quick", "--epochs",
                 "1", "--out", str(out), "--retrain", "--retrain-epochs", "1"]) == 0
    plan = json.loads(out.read_text())
    assert plan["searcher"]["name"] == "blackbox" and "test_auc" in plan["metrics"]
    assert "total" in capsys.readouterr().out  # the per-field table


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_missing_study_file_exits_2(tmp_path, capsys):
    assert main(["search", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: no such file" in _one_line_error(capsys)


def test_unknown_method_exits_2(study_file, capsys):
    assert main(["search", str(study_file), "--method", "blackbx", "--out-dir",
                 str(study_file.parent / "other")]) == 2
    err = _one_line_error(capsys)
    assert "unknown method 'blackbx'" in err and "did you mean 'blackbox'" in err
    assert main(["search", "--method", "nope", "--out", "x.json"]) == 2
    assert "unknown method 'nope'" in _one_line_error(capsys)


def test_exporting_a_failed_trial_exits_2(study_file, tmp_path, capsys):
    import autodim

    res = autodim.load_study(study_file)
    trial = res.study.ask()
    res.study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert main(["export", str(study_file), "--trial", str(trial.number), "--out",
                 str(tmp_path / "x")]) == 2
    assert f"trial {trial.number}" in _one_line_error(capsys)
    assert main(["export", str(study_file), "--out", str(tmp_path / "x")]) == 2
    assert "exactly one of" in _one_line_error(capsys)


def test_dashboard_names_the_objectives_and_feasibility(study_file):
    from optuna.trial import TrialState

    res = optuna.load_study(study_name="cli", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(
            str(study_file.parent / "out" / "cli" / "study.journal"))))
    assert res.metric_names == ["val_auc", "bytes"]
    done = res.get_trials(states=(TrialState.COMPLETE,))
    assert done and all(isinstance(t.user_attrs.get("feasible"), bool) for t in done)


def test_search_shows_trial_progress_when_asked(study_file, capsys):
    """Adds trials to the shared study: tests after it do not count trials."""
    import re

    assert main(["search", str(study_file), "--resume", "--n-trials", "5", "--progress"]) == 0
    captured = capsys.readouterr()
    shown = re.findall(r"progress: trials (\d+)/5, ETA ([^,\s]+)(.*)", captured.err)
    assert shown[0][1] == "-" and int(shown[0][0]) < 5  # no pace before a trial ends here
    assert shown[-1][:2] == ("5", "0:00") and "best val AUC" in shown[-1][2]
    assert "progress: epoch 1/1" in captured.err
    # the trial lines keep their columns with the [i/n] tag
    lines = [x for x in captured.out.splitlines() if x.startswith("trial ")]
    assert lines and len({x.index(":") for x in lines if "[" in x}) == 1


def _static_ready() -> bool:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    from autodim.viz.static import browser_path

    return browser_path() is not None


@pytest.mark.slow
@pytest.mark.skipif(not _static_ready(), reason="needs kaleido ([static]) and chromium")
def test_pareto_and_report_write_images(study_file, tmp_path):
    html = tmp_path / "front.html"
    assert main(["-q", "pareto", str(study_file), "--html", str(html), "--png", "--svg"]) == 0
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (tmp_path / "front.svg").read_text()[:2000]
    out = tmp_path / "rep.html"
    assert main(["-q", "report", str(study_file), "--out", str(out), "--svg"]) == 0
    figs = sorted((tmp_path / "rep_figures").glob("*.svg"))
    n = int(out.read_text().split("name='autodim-figures' content='")[1].split("'")[0])
    assert len(figs) == n and figs[0].name.startswith("01-")
