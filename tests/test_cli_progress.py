"""Progress display (trials, epochs, data preparation) and training devices."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys

import pytest

from autodim import progress
from autodim.cli import main

TRAIN = ["train", "--data", "synthetic:tiny", "--epochs", "2", "--dim", "8"]


def test_no_progress_when_stdout_is_not_a_terminal(capsys):
    assert main(TRAIN) == 0
    assert "progress:" not in capsys.readouterr().err


def test_progress_lines_when_asked(capsys):
    assert main(TRAIN + ["--progress"]) == 0
    err = capsys.readouterr().err
    assert "progress: preparing data synthetic:tiny" in err
    assert "progress: epoch 1/2, val AUC" in err and "progress: epoch 2/2" in err


def test_quiet_silences_progress(capsys):
    assert main(TRAIN + ["--progress", "-q"]) == 0
    assert "progress:" not in capsys.readouterr().err


def test_choose_picks_by_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress.choose(quiet=False, asked=None, stdout=Tty()),
                      progress.RichProgress)
    assert not progress.choose(quiet=False, asked=None, stdout=io.StringIO()).enabled
    assert isinstance(progress.choose(quiet=False, asked=True, stdout=io.StringIO()),
                      progress.PlainProgress)
    assert not progress.choose(quiet=True, asked=True, stdout=Tty()).enabled
    assert not progress.choose(quiet=False, asked=False, stdout=Tty()).enabled


def test_rich_display_shows_done_total_eta_and_best():
    from rich.console import Console

    buf = io.StringIO()
    display = progress.RichProgress(Console(file=buf, force_terminal=True, width=160))
    display.start_trials(total=4, done=1)
    display.trial_done(2, best="val AUC 0.7123 at 5.9 KB (trial 3)")
    display.epoch_done(3, 8, 0.69)
    display._progress.refresh()
    display.close()
    out = buf.getvalue()
    assert "trials" in out and "2/4" in out and "ETA" in out
    assert "best val AUC 0.7123" in out and "epochs" in out and "3/8" in out


def test_plain_eta_counts_this_sessions_pace(monkeypatch):
    buf = io.StringIO()
    clock = iter([100.0, 130.0, 130.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    display = progress.PlainProgress(buf)
    display.start_trials(total=5, done=2)  # 2 done before this session
    display.trial_done(3)  # one trial took 30 s here: 2 left -> 60 s
    assert buf.getvalue().splitlines()[-1] == "progress: trials 3/5, ETA 1:00"


# -- devices --------------------------------------------------------------------------------
def test_study_file_train_devices(tmp_path):
    from autodim.errors import ConfigError
    from autodim.study.config import StudyConfig

    base = {"dataset": "synthetic:tiny", "methods": "blackbox", "budget": "10x"}
    cfg = StudyConfig.from_dict({**base, "train": {"accelerator": "gpu", "devices": [1],
                                                   "strategy": "ddp"}})
    tc = cfg.train.config(seed=0)
    assert (tc.accelerator, tc.devices, tc.strategy) == ("gpu", [1], "ddp")
    # several devices per trial: DDP would re-run the whole study per device
    for many in (2, "auto", [0, 1], -1):
        with pytest.raises(ConfigError, match=r"train.devices: a study trains on one device"):
            StudyConfig.from_dict({**base, "train": {"devices": many}})
    with pytest.raises(ConfigError, match=r"train.accelerator: unknown accelerator 'gpuu'"):
        StudyConfig.from_dict({**base, "train": {"accelerator": "gpuu"}})
    with pytest.raises(ConfigError, match=r"train.devices: must be >= 1"):
        StudyConfig.from_dict({**base, "train": {"devices": 0}})


def test_devices_reach_lightning(tiny_data):
    from autodim.task import TrainConfig, make_trainer

    trainer = make_trainer(TrainConfig(accelerator="cpu", devices=2, strategy="ddp_spawn"))
    assert trainer.num_devices == 2 and "DDP" in type(trainer.strategy).__name__


def test_bad_accelerator_is_one_line(capsys):
    assert main(TRAIN + ["--accelerator", "tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: train: accelerator='tpu'") and "\n" not in err


def test_sparse_tables_under_ddp_are_refused(tiny_data):
    from autodim.data.datamodule import CTRDataModule
    from autodim.errors import AutodimError
    from autodim.plan import DimensionPlan
    from autodim.task import TrainConfig, train_plan

    plan = DimensionPlan.full(tiny_data.schema, 8)
    cfg = TrainConfig(max_epochs=1, devices=2, strategy="ddp", sparse_threshold=10)
    with pytest.raises(AutodimError, match="cannot train sparse-gradient tables"):
        train_plan(plan, CTRDataModule(tiny_data, batch_size=256), config=cfg)


def _metrics(out: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in out.strip().splitlines() if " " in line)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    """strategy ddp, 2 CPU processes (gloo): Lightning re-runs the command for rank 1; the
    plan's bytes are those of one device and the AUC is finite; rank 1 prints nothing."""
    argv = [sys.executable, "-m", "autodim", "-q", "train", "--data", "synthetic:tiny",
            "--epochs", "1", "--dim", "8", "--plan", "uniform", "--budget", "4x"]
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get(
        "PYTHONPATH", "")}
    one = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    two = subprocess.run(argv + ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    m1, m2 = _metrics(one.stdout), _metrics(two.stdout)
    assert m2["bytes"] == m1["bytes"]
    assert math.isfinite(float(m2["test AUC"])) and 0.5 < float(m2["test AUC"]) <= 1.0
    assert two.stdout.count("test AUC") == 1  # only rank 0 reports


def test_trial_lines_keep_their_columns_with_the_tag():
    import optuna

    from autodim.study.runner import trial_line

    def trial(kind, method):
        return optuna.trial.create_trial(values=[0.7, 100.0], user_attrs={
            "kind": kind, "method": method, "budget": "10x", "val_auc": 0.7, "bytes": 100,
            "compression": 10.0, "feasible": True})

    lines = [trial_line(trial("baseline", "baseline:mde"), 3, 12),
             trial_line(trial("search", "darts"), 3, 12),
             trial_line(trial("search", "sseds"), 12, 12)]
    assert len({line.index("10x") for line in lines}) == 1, lines
    assert len({line.index(": val AUC") for line in lines}) == 1, lines
