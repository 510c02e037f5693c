"""Crash and resume: ``autodim search`` killed mid-trial (SIGKILL, SIGINT), then --resume.

Every trial completed before the kill is kept and not re-run (numbers, params and values
unchanged), the interrupted trial is failed and re-queued, the study ends with exactly the
target number of search trials, and no kill leaves a file that does not parse.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import optuna
import pytest
from conftest import check_files_parse, run_cli, spawn, write_study
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.ERROR)
N_TRIALS = 3


def _load(folder: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name="rel", storage=JournalStorage(
        JournalFileBackend(str(folder / "study.journal"))))


def _mid_trial(folder: Path) -> int | None:
    """A trial that is running now (heartbeat, no plan yet) once one trial is complete."""
    trials = folder / "trials"
    if not trials.is_dir():
        return None
    done = [d for d in trials.iterdir() if (d / "plan.json").is_file()]
    running = [d for d in trials.iterdir() if (d / "heartbeat").exists()
               and not (d / "plan.json").exists() and not (d / "weights.safetensors").exists()]
    if done and running:
        return int(running[0].name)
    return None


def _kill_mid_trial(path: Path, folder: Path, sig: int, argv_extra=()) -> int:
    proc = spawn(["search", str(path), *argv_extra])
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail("the study finished before it could be killed:\n"
                            + proc.stdout.read()[-3000:])
            n = _mid_trial(folder)
            if n is not None:
                time.sleep(0.3)  # well inside the trial (search or retrain)
                if _mid_trial(folder) != n:
                    continue
                proc.send_signal(sig)
                rc = proc.wait(timeout=60)
                out = proc.stdout.read()
                assert rc != 0, out
                if sig == signal.SIGINT:
                    assert "Traceback" not in out, out[-3000:]
                return n
            time.sleep(0.05)
        pytest.fail("no trial completed in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _snapshot(folder: Path):
    study = _load(folder)
    return {t.number: (t.params, t.values, t.user_attrs.get("val_auc"))
            for t in study.trials if t.state == TrialState.COMPLETE}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_kill_mid_trial_then_resume(sig, tmp_path):
    # Trials of a few seconds each (bigger data, 2 epochs) so the kill lands inside one
    # (40k rows: steps got faster, and a longer trial widens the window the kill must hit).
    path = write_study(tmp_path, n_trials=N_TRIALS, baselines=["uniform"],
                       dataset={"source": "synthetic:tiny", "rows": 40000},
                       train={"epochs": 2, "batch_size": 128})
    folder = tmp_path / "out" / "rel"
    killed = _kill_mid_trial(path, folder, sig)
    before = _snapshot(folder)
    assert before, "at least one trial was complete before the kill"
    assert killed not in before
    check_files_parse(folder)  # a kill never leaves a half-written plan/weights/pareto

    rc, out, err = run_cli(["search", str(path), "--resume"])
    assert rc == 0, err + out
    study = _load(folder)
    trials = {t.number: t for t in study.trials}
    # Nothing finished is lost or re-run.
    for n, (params, values, auc) in before.items():
        t = trials[n]
        assert t.state == TrialState.COMPLETE and t.params == params and t.values == values
        assert t.user_attrs.get("val_auc") == auc
    # The interrupted trial is failed, with a reason, and its parameters re-queued once.
    k = trials[killed]
    assert k.state == TrialState.FAIL and k.user_attrs.get("fail_reason")
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == k.params
    # The target is met exactly: N search trials done, the baseline once.
    search = [t for t in study.trials if t.user_attrs.get("kind") == "search"
              and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(search) == N_TRIALS
    base = [t for t in study.trials if t.user_attrs.get("kind") == "baseline"
            and t.state == TrialState.COMPLETE]
    assert len(base) == 1
    assert check_files_parse(folder) >= 2 * len(search)
    # A second resume has nothing left to do.
    n_before = len(study.trials)
    assert run_cli(["search", str(path), "--resume"])[0] == 0
    assert len(_load(folder).trials) == n_before
