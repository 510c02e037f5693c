"""Many workers on one study in a real PostgreSQL.

Needs ``AUTODIM_TEST_POSTGRES_URL`` (e.g. ``postgresql://autodim:autodim@127.0.0.1/autodim_test``);
skipped without it, except under ``CI=true`` where its absence is a failure.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import SPACE, check_files_parse, spawn, write_study
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.ERROR)
URL = os.environ.get("AUTODIM_TEST_POSTGRES_URL")

if not URL:
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but AUTODIM_TEST_POSTGRES_URL is not set: the PostgreSQL "
                    "worker tests must run in CI", pytrace=False)
    pytest.skip("AUTODIM_TEST_POSTGRES_URL not set", allow_module_level=True)

N_TRIALS = 6
BASELINES = ["uniform", "hash"]
# Workers notice a dead one after GRACE_S (120 s in real use; 8 s here). Much shorter and a
# live worker whose heartbeat thread is starved on a loaded 2-core machine (the suite runs
# two test processes, each with three workers) looks dead too, and its trial runs twice.
FAST_HEARTBEAT = ("import autodim.study.storage as _s\n"
                  "_s.HEARTBEAT_S, _s.GRACE_S = 1, 8\n")


def _study(name: str):
    from autodim.study.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(URL, Path(".")))


def _running_elsewhere(study, pid: int) -> int | None:
    # A search trial of that worker that has sampled all its parameters (its settings are
    # recorded once they are; memcom is off here): one killed before (during its surplus
    # check, or between two suggestions) has none or some to run again, and its retry
    # rightly samples the rest afresh.
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if (t.user_attrs.get("pid") == pid and t.user_attrs.get("kind") == "search"
                and "settings" in t.user_attrs):
            return t.number
    return None


def test_three_workers_one_killed(tmp_path):
    name = f"rel_pg_{uuid.uuid4().hex[:8]}"
    # ~5000 points: workers drawing the same one by chance is rare (~0.3 % a run); the
    # same seed in every worker would make it certain.
    space = {**SPACE, "methods": {"blackbox": {"params": {
        "n_candidates": {"type": "int", "low": 2, "high": 6},
        "max_batches": {"type": "int", "low": 2, "high": 1000}}}}}
    path = write_study(tmp_path, space=space, name=name, n_trials=N_TRIALS,
                       baselines=BASELINES, dataset={"source": "synthetic:tiny", "rows": 12000},
                       train={"epochs": 2, "batch_size": 128})
    argv = ["search", str(path), "--storage", URL, "--resume"]
    workers = [spawn(argv, prelude=FAST_HEARTBEAT) for _ in range(3)]
    victim, killed = workers[0], None
    try:
        deadline = time.monotonic() + 150
        while killed is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if victim.poll() is not None:
                pytest.fail("worker 0 ended before it could be killed:\n"
                            + victim.stdout.read()[-3000:])
            try:
                study = _study(name)
            except KeyError:
                continue
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if done:
                killed = _running_elsewhere(study, victim.pid)
        assert killed is not None, "worker 0 never ran a search trial"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        outs = []
        for w in workers[1:]:
            outs.append(w.communicate(timeout=240)[0])
            assert w.returncode == 0, outs[-1][-3000:]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()

    study = _study(name)
    trials = study.trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # The killed worker's trial: failed by the heartbeat, its parameters run again once.
    k = study.trials[killed]
    assert k.state == TrialState.FAIL
    retried = [t for t in trials if killed in t.system_attrs.get("retry_history", [])]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == k.params
    # The target, exactly: N search trials finished (the retry counts, the failure not).
    search = [t for t in trials if t.user_attrs.get("kind") == "search"
              and t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(search) == N_TRIALS, [(t.number, t.state.name) for t in trials]
    # No trial run twice: identical parameters only as a recorded reuse.
    ran = Counter(tuple(sorted(t.params.items())) for t in search
                  if "duplicate_of" not in t.user_attrs)
    assert max(ran.values()) == 1, ran
    # Each enqueued baseline completed exactly once, whatever the number of workers.
    base = Counter(t.user_attrs.get("baseline") for t in trials
                   if t.user_attrs.get("kind") == "baseline" and t.state == TrialState.COMPLETE)
    assert base == Counter(BASELINES), base
    check_files_parse(tmp_path / "out" / name)
