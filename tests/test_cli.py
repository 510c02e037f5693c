"""CLI (foundation commands): train, inspect, data info/prepare, and error exits."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autodim.cli import main
from autodim.plan import DimensionPlan


def test_train_prints_metrics(capsys):
    rc = main(["-q", "train", "--data", "synthetic:tiny", "--epochs", "1", "--dim", "8",
               "--plan", "mde", "--budget", "5x"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = dict(line.rsplit(" ", 1) for line in out.strip().splitlines())
    assert 0.5 < float(lines["test AUC"]) <= 1.0
    assert float(lines["compression"].rstrip("x")) >= 5.0


def test_train_from_a_plan_file_and_inspect(tmp_path, capsys, tiny_data):
    plan = DimensionPlan.from_dims(tiny_data.schema, 8, [2, 4, 8, 1, 0])
    path = plan.save(tmp_path / "plan.json")
    assert main(["-q", "train", "--data", "synthetic:tiny", "--epochs", "1", "--dim", "8",
                 "--plan", str(path)]) == 0
    assert "test AUC" in capsys.readouterr().out
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "f03" in out and "compression" in out and f"{plan.num_bytes():,}" in out


def test_data_info(capsys):
    assert main(["data", "info", "synthetic:tiny"]) == 0
    out = capsys.readouterr().out
    assert "planted rank" in out and "f04" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "/no/such/folder"], "/no/such/folder"),
    (["train", "--data", "synthetic:tiny", "--plan", "mde"], "needs a byte budget"),
    (["train", "--data", "synthetic:tiny", "--plan", "uniform", "--budget", "lots"],
     "budget 'lots' is not understood"),
    (["inspect", "/no/plan.json"], "no such plan file"),
])
def test_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1


def test_plan_for_another_schema_is_refused(tmp_path, capsys):
    from autodim.data.schema import Field, Schema

    other = Schema([Field("x", vocab_size=3)])
    path = DimensionPlan.full(other, 8).save(tmp_path / "p.json")
    assert main(["train", "--data", "synthetic:tiny", "--dim", "8", "--plan", str(path)]) == 2
    assert "another schema" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "autodim.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "train" in out and "inspect" in out

