"""Resume and stale-trial recovery of journal studies (autodim.study.storage).

A live worker's trial is never failed, whatever its heartbeat says; failing and re-queueing
is idempotent and race-free between resumers; a worker whose trial was taken over goes on;
a disk-full trial is not counted as done; a torn journal tail is repaired, a corrupt middle
line named; a resume on other data or another search space is refused, nothing rewritten.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import SPACE, run_cli, spawn, write_study
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from autodim.study import storage

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _journal_study(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    store = JournalStorage(JournalFileBackend(str(folder / storage.JOURNAL_NAME)))
    return optuna.create_study(study_name="rel", storage=store,
                               directions=["maximize", "minimize"])


def _running_trial(study, **attrs):
    """A RUNNING trial as a worker leaves it (owner attributes as given)."""
    trial = study.ask()
    trial.suggest_int("x", 0, 1000)
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    return trial


@pytest.fixture()
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _old(path: Path, seconds: float = 10_000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    t = time.time() - seconds
    os.utime(path, (t, t))


def _states(study):
    return [(t.number, t.state.name) for t in study.get_trials(deepcopy=False)]


# -- B2: a live worker is never failed -------------------------------------------------------
def test_live_worker_with_an_old_heartbeat_is_not_failed(tmp_path, live_pid):
    study = _journal_study(tmp_path)
    t = _running_trial(study, pid=live_pid, host=socket.gethostname())
    _old(tmp_path / "trials" / f"{t.number:05d}" / "heartbeat")  # paused, or a skewed clock
    assert storage.recover_trials(study, tmp_path, journal=True) == []
    assert _states(study) == [(0, "RUNNING")]


def test_a_trial_before_its_first_attribute_is_judged_by_its_workers(tmp_path, live_pid):
    study = _journal_study(tmp_path)
    study.ask()  # Optuna created it; the worker was stopped before writing its owner
    # Another worker of this study is alive on this host: the trial may be its own.
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / f"{socket.gethostname()}.{live_pid}").touch()
    assert storage.recover_trials(study, tmp_path, journal=True) == []
    assert _states(study) == [(0, "RUNNING")]
    # No worker left: stale, failed and re-queued at once (not after the grace period).
    (tmp_path / "workers" / f"{socket.gethostname()}.{live_pid}").unlink()
    assert storage.recover_trials(study, tmp_path, journal=True) == [0]
    assert _states(study) == [(0, "FAIL"), (1, "WAITING")]


def test_a_dead_worker_on_this_host_is_failed_however_fresh_its_heartbeat(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    study = _journal_study(tmp_path)
    t = _running_trial(study, pid=proc.pid, host=socket.gethostname())
    (tmp_path / "trials" / f"{t.number:05d}").mkdir(parents=True)
    (tmp_path / "trials" / f"{t.number:05d}" / "heartbeat").touch()
    assert storage.recover_trials(study, tmp_path, journal=True) == [0]


def test_fail_and_requeue_is_idempotent(tmp_path):
    """A kill between failing a trial and re-queueing it: the next resume re-queues it,
    once."""
    study = _journal_study(tmp_path)
    t = _running_trial(study, pid=1, host="elsewhere")
    t.set_user_attr("fail_reason", "stale: …")
    t.set_user_attr("requeue", True)
    study.tell(t, state=TrialState.FAIL)  # ... and the resumer was killed here
    assert storage.recover_trials(study, tmp_path, journal=True) == [0]
    assert storage.recover_trials(study, tmp_path, journal=True) == []
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [w.user_attrs["retry_of"] for w in waiting] == [0]
    assert waiting[0].params == t.params


def test_two_resumers_fail_a_stale_trial_once(tmp_path, monkeypatch):
    study = _journal_study(tmp_path)
    _running_trial(study, pid=1, host="elsewhere")  # another host, no heartbeat, old
    monkeypatch.setattr(storage, "_age", lambda trial, now: 1e9)
    judged = storage._is_stale

    def slow(*a, **k):  # both resumers judge before either fails: the race, made certain
        out = judged(*a, **k)
        time.sleep(0.3)
        return out

    monkeypatch.setattr(storage, "_is_stale", slow)
    errors: list[BaseException] = []

    def resume():
        try:
            s = optuna.load_study(study_name="rel", storage=JournalStorage(
                JournalFileBackend(str(tmp_path / storage.JOURNAL_NAME))))
            storage.recover_trials(s, tmp_path, journal=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    study = optuna.load_study(study_name="rel", storage=study._storage)
    assert _states(study) == [(0, "FAIL"), (1, "WAITING")]


def test_past_the_retry_limit_a_stale_trial_does_not_count_as_done(tmp_path):
    from autodim.study.runner import _counts

    study = _journal_study(tmp_path)
    t = _running_trial(study, pid=1, host="elsewhere", kind="search",
                       retries=storage.MAX_RETRY)
    t.set_user_attr("requeue", True)
    study.tell(t, state=TrialState.FAIL)
    assert storage.recover_trials(study, tmp_path, journal=True) == []  # not again
    assert _counts(study) == (0, 0, 0)


# -- whole studies ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from autodim.data import load_data

    return load_data("synthetic:tiny", rows=1500)


def _config(tmp_path, **over):
    from autodim.study.config import load_study_config

    over.setdefault("dataset", {"source": "synthetic:tiny", "rows": 1500})
    return load_study_config(write_study(tmp_path, **over))


def _run(config, folder, data=None, **kw):
    from autodim.study.runner import run_study

    return run_study(config, out_dir=folder, data=data, threads=1,
                     warn=kw.pop("warn", lambda _m: None), **kw)


def _load(folder: Path):
    return optuna.load_study(study_name="rel", storage=JournalStorage(
        JournalFileBackend(str(folder / storage.JOURNAL_NAME))))


def _complete(folder: Path) -> int:
    return sum(t.state == TrialState.COMPLETE for t in _load(folder).trials)


def test_a_worker_whose_trial_was_taken_over_goes_on(tmp_path, tiny, monkeypatch):
    from autodim.study.objective import TrialObjective

    config = _config(tmp_path, n_trials=2)
    folder = tmp_path / "out"
    real = TrialObjective._search
    calls = []

    def search(self, trial, *a, **k):
        out = real(self, trial, *a, **k)
        if not calls:  # another resumer judged this worker stopped, meanwhile
            other = _load(folder)
            t = optuna.Trial(other, trial._trial_id)
            t.set_user_attr("fail_reason", "stale: its worker stopped before finishing")
            t.set_user_attr("requeue", True)
            other.tell(trial.number, state=TrialState.FAIL)
        calls.append(trial.number)
        return out

    monkeypatch.setattr(TrialObjective, "_search", search)
    lines: list[str] = []
    _run(config, folder, tiny, echo=lines.append)
    assert any("another worker judged this one stopped" in m for m in lines), lines
    assert _complete(folder) == 2


def test_a_disk_full_trial_is_not_counted_and_is_rerun(tmp_path, tiny, monkeypatch,
                                                       one_line_error):
    from autodim.errors import AutodimError
    from autodim.study.objective import TrialObjective

    config = _config(tmp_path, n_trials=2)
    folder = tmp_path / "out"
    real = TrialObjective._train_and_record

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TrialObjective, "_train_and_record", full)
    with pytest.raises(AutodimError, match="No space left on device"):
        _run(config, folder, tiny)
    from autodim.study.runner import _counts

    assert _counts(_load(folder))[0] == 0  # not counted as done
    monkeypatch.setattr(TrialObjective, "_train_and_record", real)
    lines: list[str] = []
    _run(config, folder, tiny, resume=True, echo=lines.append)
    assert any("re-queued" in m for m in lines), lines
    study = _load(folder)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 2
    assert any(t.user_attrs.get("retry_of") == 0 and t.state == TrialState.COMPLETE
               for t in study.trials)


# -- B3: the journal's tail ------------------------------------------------------------------
def test_a_torn_last_record_is_cut_off_with_a_warning(tmp_path, tiny):
    config = _config(tmp_path, n_trials=1)
    folder = tmp_path / "out"
    _run(config, folder, tiny)
    journal = folder / storage.JOURNAL_NAME
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"op_code":5,"worker_id":"x","trial_id":')  # kill -9 here
    warned: list[str] = []
    _run(config, folder, tiny, n_trials=2, resume=True, warn=warned.append)
    msg = [w for w in warned if "torn" in w]
    assert msg and str(journal) in msg[0] and "op_code" in msg[0], warned
    assert journal.read_bytes().startswith(good) and journal.read_bytes().endswith(b"\n")
    # and the repaired journal keeps working
    _run(config, folder, tiny, n_trials=3, resume=True)
    assert _complete(folder) == 3


def test_a_corrupt_line_in_the_middle_is_named(tmp_path, tiny, one_line_error):
    config_path = write_study(tmp_path, n_trials=1, dataset={"source": "synthetic:tiny",
                                                             "rows": 1500})
    _run(_config(tmp_path, n_trials=1), tmp_path / "out", tiny)
    journal = tmp_path / "out" / storage.JOURNAL_NAME
    lines = journal.read_bytes().split(b"\n")
    lines[3] = b'{"op_code": 4, "trial_id": 0, "us'  # a bad sector, an editor
    journal.write_bytes(b"\n".join(lines))
    before = journal.read_bytes()
    rc, out, err = run_cli(["search", str(config_path), "--resume", "--out-dir",
                            str(tmp_path / "out"), "--n-trials", "2"])
    one_line_error(rc, err, f"{journal}:4", "corrupt journal record")
    assert journal.read_bytes() == before


# -- B1: resume on other data or another search space ---------------------------------------
@pytest.mark.parametrize("change", ["rows", "seed", "space"])
def test_resume_on_other_data_or_space_is_refused(change, tmp_path, one_line_error):
    path = write_study(tmp_path, n_trials=1, dataset={"source": "synthetic:tiny",
                                                      "rows": 1500})
    out = tmp_path / "out"
    rc, _o, err = run_cli(["search", str(path), "--out-dir", str(out)])
    assert rc == 0, err
    before = {p.name: p.read_bytes() for p in (out / "study.json", out / storage.JOURNAL_NAME)}
    if change == "space":
        space = yaml.safe_load(yaml.safe_dump(SPACE))
        space["methods"]["blackbox"]["params"]["n_candidates"]["high"] = 5
        (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    else:
        dataset = {"source": "synthetic:tiny", "rows": 1500}
        dataset.update({"rows": 2000} if change == "rows" else {"seed": 7})
        write_study(tmp_path, n_trials=1, dataset=dataset)
    rc, _o, err = run_cli(["search", str(path), "--resume", "--out-dir", str(out),
                           "--n-trials", "2"])
    one_line_error(rc, err, "cannot resume", "search space" if change == "space" else
                   "dataset")
    after = {p.name: p.read_bytes() for p in (out / "study.json", out / storage.JOURNAL_NAME)}
    assert after == before  # nothing rewritten


def test_a_torn_tail_left_by_another_worker_is_cut_before_the_next_append(tmp_path):
    """Worker A dies mid-append while worker B goes on: B's next record must not be glued
    onto A's torn one (that would corrupt the journal for every reader)."""
    warned: list[str] = []
    store = storage.open_storage(None, tmp_path, warn=warned.append)
    study = optuna.create_study(study_name="rel", storage=store)
    journal = tmp_path / storage.JOURNAL_NAME
    with open(journal, "ab") as fh:
        fh.write(b'{"op_code":5,"worker_id":"dead"')  # A, killed mid-write
    study.set_user_attr("after", 1)  # B appends
    assert any("torn" in w for w in warned), warned
    storage.check_journal(journal)  # every line whole again
    fresh = optuna.load_study(study_name="rel", storage=JournalStorage(
        JournalFileBackend(str(journal))))
    assert fresh.user_attrs == {"after": 1}


@pytest.mark.slow
def test_b2_a_paused_worker_is_not_taken_over_by_a_resumer(tmp_path):
    """The red team's B2, with two real processes: worker A is paused inside its trial and
    its heartbeats look 3 hours old (a stopped process, a skewed clock); worker B runs
    --resume. A's trial is left alone, A then finishes it, nothing runs twice."""

    path = write_study(tmp_path, n_trials=1, dataset={"source": "synthetic:tiny",
                                                      "rows": 1500})
    folder = tmp_path / "out" / "rel"
    go, paused = tmp_path / "go", tmp_path / "paused"
    prelude = (  # A stops inside its trial until the test lets it go on
        "import pathlib, time\n"
        "from autodim.study.objective import TrialObjective\n"
        "_real = TrialObjective._train_and_record\n"
        "def _paused(self, *a, **k):\n"
        f"    pathlib.Path({str(paused)!r}).touch()\n"
        f"    while not pathlib.Path({str(go)!r}).exists():\n"
        "        time.sleep(0.05)\n"
        "    return _real(self, *a, **k)\n"
        "TrialObjective._train_and_record = _paused\n")
    proc = spawn(["search", str(path)], prelude=prelude)
    try:
        deadline = time.monotonic() + 120
        while not paused.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert paused.exists(), "worker A never got into its trial"
        beats = list((folder / "trials").glob("*/heartbeat")) + list(
            (folder / "workers").glob("*"))
        assert beats
        for p in beats:
            _old(p)
        rc, out, err = run_cli(["search", str(path), "--resume"])
        assert rc == 0, err + out
        assert "re-queued" not in out + err, out + err
        go.touch()
        rc_a = proc.wait(timeout=180)
        out_a = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc_a == 0, out_a[-3000:]
    assert "Cannot tell" not in out_a
    study = optuna.load_study(study_name="rel", storage=JournalStorage(
        JournalFileBackend(str(folder / storage.JOURNAL_NAME))))
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "COMPLETE")]
