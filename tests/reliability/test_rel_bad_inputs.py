"""Bad input everywhere: each row of the README's "Bad input" table is a case here.

Every case runs ``autodim.cli.main([...])`` and asserts a one-line ``error: ...`` naming the
thing at fault, a non-zero exit, no traceback (unless ``--debug``), and that the files that
were there before (data, spec, plan, the study's results) are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from conftest import SPACE, check_files_parse, cli_env, run_cli, write_study

from autodim.errors import AutodimError

torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.ERROR)


def _digest(*paths: Path) -> dict[str, str]:
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# -- data files ------------------------------------------------------------------------------
def _good_csv() -> str:
    rng = np.random.default_rng(0)
    rows = [f"u{rng.integers(5)},i{rng.integers(7)},{rng.integers(2)}" for _ in range(60)]
    return "user,item,clicked\n" + "\n".join(rows) + "\n"


GOOD = _good_csv()
DATA_CASES = {
    # name: (file content or None for no file, expected parts of the error or None if it loads)
    "missing file": (None, ["no such file or folder"]),
    "empty file": ("", ["empty file"]),
    "truncated mid-line": (GOOD[: GOOD.index("\n", len(GOOD) // 2) + 4],
                           ["has 2 cells, the header has 3 (ragged row)"]),
    "wrong delimiter": (GOOD.replace(",", ";"),
                        ["single column 'user;item;clicked'", "delimiter"]),
    "missing label column": (GOOD.replace(",clicked", ""),
                             ["label column 'clicked' not found", "columns found: user, item"]),
    "labels not 0/1": (GOOD.replace(",1\n", ",2\n", 1),
                       ["label column 'clicked' must hold 0/1", "'2'"]),
    "header only": ("user,item,clicked\n", ["no data rows"]),
    "non-UTF-8 bytes": (GOOD.encode()[:200] + b"\xff\xfe" + GOOD.encode()[200:],
                        ["not valid UTF-8", "byte offset 200"]),
    "NaN/empty categoricals": (GOOD.replace("\nu1,", "\n,", 5).replace(",i2,", ",NaN,", 5), None),
    "a column that changes type": (GOOD.replace("i3,", "3.5,").replace("i4,", "4,"), None),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_file(case, tmp_path, one_line_error):
    content, expected = DATA_CASES[case]
    path = tmp_path / "clicks.csv"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"label": "clicked", "fields": ["user", "item"]}))
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    before = _digest(tmp_path)
    rc, out, err = run_cli(["data", "info", str(path), "--spec", str(spec)])
    if expected is None:  # not an error: missing values are a category of their own
        assert rc == 0, err
        assert "user" in out and "item" in out
    else:
        one_line_error(rc, err, *expected)
        if content is not None:
            assert "clicks.csv" in err
    assert _digest(tmp_path) == before


def test_nan_categoricals_get_their_own_id(tmp_path):
    from autodim.data.tabular import load_table

    path = tmp_path / "c.csv"
    path.write_text(DATA_CASES["NaN/empty categoricals"][0])
    data = load_table(path, {"label": "clicked", "fields": ["user", "item"]})
    (tmp_path / "g.csv").write_text(GOOD)
    full = load_table(tmp_path / "g.csv", {"label": "clicked", "fields": ["user", "item"]})
    # one more id each: "missing" is a value, not an error or a collision with a real id
    assert data.schema["user"].vocab_size == full.schema["user"].vocab_size + 1
    assert data.schema["item"].vocab_size == full.schema["item"].vocab_size + 1


@pytest.mark.parametrize("where", ["header", "row"])
def test_one_enormous_line_does_not_exhaust_memory(where, tmp_path):
    """A 50 MB cell: in the header it is an error whose line stays short; in a row it loads.
    Either way the process stays within a small multiple of the file's size."""
    rng = np.random.default_rng(0)
    rows = [f"u{rng.integers(5)},i{rng.integers(7)},{rng.integers(2)}" for _ in range(60)]
    big = "x" * 50_000_000
    if where == "row":
        rows[10] = big + ",i1,1"
        text = "user,item,clicked\n" + "\n".join(rows) + "\n"
    else:
        text = "user,item,clicked " + big + "\n" + "\n".join(rows) + "\n"
    path = tmp_path / "big.csv"
    path.write_text(text)
    del text, big
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"label": "clicked", "fields": ["user", "item"]}))
    code = ("import resource, sys\nfrom autodim.cli import main\nrc = main(sys.argv[1:])\n"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "data", "info", str(path), "--spec",
                           str(spec)], env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    maxrss_mb = int(proc.stdout.split("MAXRSS")[-1]) / 1024
    assert maxrss_mb < 1500, f"{maxrss_mb:.0f} MB for a 50 MB file"
    if where == "header":
        assert proc.returncode == 2
        line = proc.stderr.strip()
        assert line.startswith("error: ") and "\n" not in line and "Traceback" not in line
        assert "label column 'clicked' not found" in line and "50,000,008 characters" in line
        assert len(line) < 1000
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "rows: train" in proc.stdout


# -- study and search-space files ------------------------------------------------------------
SPACE_CASES = {
    "unknown search-space key": ({"candidate_dimz": [1, 2]},
                                 ["space.yaml", "unknown key 'candidate_dimz'",
                                  "did you mean 'candidate_dims'"]),
    "negative dim": ({"candidate_dims": [-1, 2, 4]},
                     ["space.yaml", "candidate_dims[0]", "must be >= 0", "-1"]),
    "empty candidate list": ({"candidate_dims": []},
                             ["space.yaml", "candidate_dims", "non-empty list"]),
    "dim of the wrong type": ({"candidate_dims": ["four"]}, ["candidate_dims[0]", "'four'"]),
}
STUDY_CASES = {
    "unknown study key": ({"n_trails": 3}, ["unknown key 'n_trails'",
                                            "did you mean 'n_trials'"]),
    "wrong type": ({"n_trials": "many"}, ["n_trials", "expected an integer", "'many'"]),
    "zero D": ({"D": 0}, ["D: must be >= 1, got 0"]),
    "negative D": ({"D": -4}, ["D: must be >= 1, got -4"]),
    "negative n_trials": ({"n_trials": -1}, ["n_trials: must be >= 0"]),
    "negative budget": ({"budget": -5}, ["budgets[0]", "must be positive"]),
    "budget below the minimum feasible model": (
        {"budget": 10}, ["budgets: 10 = 10 B is below the smallest feasible model"]),
    "unknown method in the study": ({"methods": ["blackbx"]}, ["unknown method 'blackbx'",
                                                              "did you mean 'blackbox'"]),
}


@pytest.mark.parametrize("case", list(SPACE_CASES) + list(STUDY_CASES))
def test_bad_study_or_search_space(case, tmp_path, one_line_error):
    if case in SPACE_CASES:
        change, expected = SPACE_CASES[case]
        path = write_study(tmp_path, space={**SPACE, **change})
    else:
        change, expected = STUDY_CASES[case]
        path = write_study(tmp_path, **change)
    before = _digest(tmp_path)
    rc, _, err = run_cli(["search", str(path)])
    one_line_error(rc, err, *expected)
    assert _digest(tmp_path) == before  # nothing written: no results folder either
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, expected", [
    ("name: [unclosed\n", ["rel.yaml", "not valid YAML at line 2"]),
    ("- a\n- b\n", ["rel.yaml", "expected a mapping"]),
    ("", ["rel.yaml", "dataset: missing"]),
    (b"name: caf\xe9\n", ["rel.yaml", "not valid UTF-8 at byte offset 9"]),
])
def test_study_file_that_is_not_a_study(text, expected, tmp_path, one_line_error):
    path = write_study(tmp_path)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    rc, _, err = run_cli(["search", str(path)])
    one_line_error(rc, err, *expected)


def test_budget_above_the_full_model_is_a_warning(tmp_path):
    path = write_study(tmp_path, budget="1x", n_trials=0, baselines=["uniform"])
    rc, out, err = run_cli(["search", str(path)])
    assert rc == 0, err
    assert "warning: budget '1x'" in err and "not below the full D=8 model" in err
    assert "error" not in err


# -- plan JSON -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory):
    from autodim.data import load_data
    from autodim.plan import DimensionPlan

    data = load_data("synthetic:tiny", rows=3000)
    plan = DimensionPlan.from_dims(data.schema, 8, [2, 4, 8, 8, 8])
    return plan.to_dict()


def _edit_plan(d: dict, case: str) -> str:
    d = json.loads(json.dumps(d))
    if case == "wrong version":
        d["version"] = 7
    elif case == "dims above D":
        d["fields"][0]["dim"] = 16
    elif case == "buckets >= vocab":
        f = d["fields"][3]
        f["hashing"] = {"method": "memcom", "buckets": f["vocab_size"]}
    elif case == "hand-edited bytes":
        d["num_bytes"] = d["num_bytes"] - 1
    elif case == "another schema's fingerprint":
        d["fields"][0]["vocab_size"] += 5  # a plan made for other data
        d.pop("num_bytes")
        d["schema_fingerprint"] = "0123456789abcdef"
    elif case == "not JSON (truncated)":
        return json.dumps(d)[:200]
    elif case == "not a plan":
        return json.dumps({"format": "autodim.study", "version": 1})
    return json.dumps(d)


PLAN_CASES = {
    "wrong version": ["plan.json", "plan version 7 is not supported"],
    "dims above D": ["plan.json", "dim 16 exceeds the common dim D=8"],
    "buckets >= vocab": ["plan.json", "hashing buckets >= vocab_size"],
    "hand-edited bytes": ["plan.json", "num_bytes says"],
    "another schema's fingerprint": ["another schema"],
    "not JSON (truncated)": ["plan.json", "not valid JSON"],
    "not a plan": ["plan.json", "format 'autodim.study'"],
}


@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_bad_plan_json(case, tiny_plan, tmp_path, one_line_error):
    path = tmp_path / "plan.json"
    path.write_text(_edit_plan(tiny_plan, case))
    before = _digest(path)
    # `train` checks the plan against the data before training anything.
    rc, _, err = run_cli(["train", "--data", "synthetic:tiny", "--rows", "3000", "--dim", "8",
                          "--plan", str(path), "--epochs", "1"])
    one_line_error(rc, err, *PLAN_CASES[case])
    if case != "another schema's fingerprint":
        rc, _, err = run_cli(["inspect", str(path)])
        one_line_error(rc, err, *PLAN_CASES[case])
    assert _digest(path) == before


# -- CLI misuse on an existing study ---------------------------------------------------------
@pytest.fixture(scope="module")
def done_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("misuse")
    path = write_study(folder, n_trials=1, baselines=["uniform"])
    rc, _, err = run_cli(["-q", "search", str(path)])
    assert rc == 0, err
    study = optuna.load_study(study_name="rel", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "out/rel/study.journal"))))
    failed = study.ask()
    failed.set_user_attr("kind", "search")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    return path, failed.number


MISUSE = {
    "missing study file": (lambda p, f: ["search", str(p.parent / "nope.yaml")],
                           ["nope.yaml", "no such file"]),
    "unknown method": (lambda p, f: ["search", str(p), "--method", "darst", "--resume"],
                       ["unknown method 'darst'", "did you mean 'darts'"]),
    "exporting a failed trial": (lambda p, f: ["export", str(p), "--trial", str(f)],
                                 ["trial"]),
    "exporting a trial that does not exist": (lambda p, f: ["export", str(p), "--trial", "99"],
                                              ["no trial 99"]),
    "export without a choice": (lambda p, f: ["export", str(p)], ["exactly one of"]),
    "rerun without --resume": (lambda p, f: ["search", str(p)], ["already exists", "--resume"]),
    "resume with another D": (lambda p, f: ["search", str(_changed(p, D=16)), "--resume"],
                              ["cannot resume study 'rel'", "changed from"]),
    "bad storage URL": (lambda p, f: ["pareto", str(p), "--storage", "nodb"],
                        ["storage 'nodb'", "not an Optuna storage URL"]),
    "unreachable PostgreSQL": (lambda p, f: ["search", str(p), "--resume", "--storage",
                                             "postgresql://me:secret@127.0.0.1:1/db"],
                               ["storage postgresql", "cannot open it", "Connection refused"]),
    "pareto of a folder that is no study": (lambda p, f: ["pareto", str(p.parent / "out")],
                                            ["out"]),
}


def _changed(path: Path, **changes) -> Path:
    d = yaml.safe_load(path.read_text())
    d.update(changes)
    other = path.with_name("changed.yaml")
    other.write_text(yaml.safe_dump(d))
    return other


@pytest.mark.parametrize("case", list(MISUSE))
def test_cli_misuse(case, done_study, one_line_error):
    path, failed = done_study
    argv_of, expected = MISUSE[case]
    results = path.parent / "out" / "rel"
    before = _digest(results)
    rc, _, err = run_cli(argv_of(path, failed))
    line = one_line_error(rc, err, *expected)
    assert "secret" not in line  # passwords are never printed
    after = _digest(results)
    # nothing written before is changed (a study's files are rewritten only by a run)
    assert {k: v for k, v in after.items() if k in before} == before
    check_files_parse(results)


def test_debug_shows_the_traceback(tmp_path):
    path = write_study(tmp_path, D=0)
    with pytest.raises(AutodimError, match="D: must be >= 1"):
        run_cli(["--debug", "search", str(path)])
