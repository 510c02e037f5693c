"""Helpers for the reliability tests: tiny studies, the CLI in-process and as a process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

SPACE = {"candidate_dims": [1, 2, 4, 8],
         "methods": {"blackbox": {"params": {"n_candidates": {"type": "int", "low": 2,
                                                              "high": 4},
                                             "max_batches": 4}}},
         "memcom": {"enabled": False}}


def study_dict(**overrides) -> dict:
    study = {"name": "rel", "dataset": {"source": "synthetic:tiny", "rows": 3000}, "D": 8,
             "methods": ["blackbox"], "search_space": "space.yaml", "budget": "6x",
             "n_trials": 2, "sampler": {"name": "random", "seed": 0}, "baselines": [],
             "train": {"epochs": 1, "batch_size": 256},
             "search_train": {"epochs": 1, "batch_size": 256}, "pruning": False,
             "output": "out"}
    study.update(overrides)
    return study


def write_study(folder: Path, space: dict | None = None, name: str = "rel", **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(yaml.safe_dump(space or SPACE))
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study_dict(name=name, **overrides)))
    return path


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``autodim.cli.main(argv)`` in-process: (exit code, stdout, stderr)."""
    from autodim.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("AUTODIM_CACHE", str(ROOT / ".pytest_cache" / "autodim-cache"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def spawn(argv: list[str], *, prelude: str = "", **kw) -> subprocess.Popen:
    """``autodim ARGV`` as a process (``prelude``: Python run first, e.g. to shorten the
    heartbeat grace period for a test)."""
    code = (f"import sys\n{prelude}\nfrom autodim.cli import main\n"
            f"sys.exit(main({list(argv)!r}))\n")
    return subprocess.Popen([sys.executable, "-c", code], env=cli_env(), cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def check_files_parse(folder: Path) -> int:
    """Every plan/JSON/CSV/weights file in a results folder parses; returns the count."""
    import pandas as pd

    from autodim.export import load_weights
    from autodim.plan import DimensionPlan

    n = 0
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        if p.name.endswith(".tmp"):
            continue  # an unfinished atomic write: never replaces a real file
        if p.name == "plan.json":
            DimensionPlan.load(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".csv":
            pd.read_csv(p)
        elif p.suffix == ".safetensors":
            load_weights(p)
        else:
            continue
        n += 1
    return n


@pytest.fixture()
def one_line_error(capsys):
    def check(rc: int, err: str, *parts: str) -> str:
        assert rc != 0, "expected a non-zero exit"
        line = err.strip()
        assert line.startswith("error: "), err
        assert "\n" not in line, err
        assert "Traceback" not in err
        assert len(line) < 2000, f"error line is {len(line)} characters long"
        for part in parts:
            assert part in line, line
        return line

    return check
