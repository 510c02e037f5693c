"""Where a study lives, and how it recovers from a crash.

- Default: a journal file, ``<output>/<name>/study.journal`` (``JournalStorage`` +
  ``JournalFileBackend``): no server, safe for several processes on one machine or a
  shared file system.
- Any Optuna storage URL (``sqlite:///…``, ``postgresql://…``; PostgreSQL for many workers
  on many machines). RDB storages get Optuna's heartbeat: a worker that dies stops beating,
  and after ``GRACE_S`` its trial is failed and re-queued by
  :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` (the successor of
  ``RetryFailedTrialCallback``, deprecated since Optuna 4.9).
- Journal files have no heartbeat in Optuna, so each trial here records its host and pid
  and touches ``trials/<n>/heartbeat`` every ``HEARTBEAT_S``; on ``--resume``,
  :func:`recover_trials` fails RUNNING trials whose process is gone (or whose heartbeat is
  older than ``GRACE_S``) and enqueues their parameters again. Trials stopped by Ctrl-C are
  re-queued the same way.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

from autodim.errors import ConfigError

__all__ = ["open_storage", "display_url", "recover_trials", "requeued_numbers", "Heartbeat",
           "HEARTBEAT_S", "GRACE_S", "MAX_RETRY", "JOURNAL_NAME"]

HEARTBEAT_S = 30
GRACE_S = 120
MAX_RETRY = 2
JOURNAL_NAME = "study.journal"


def open_storage(url: str | None, folder: Path):
    """An Optuna storage for ``url`` (``None``: the journal file in ``folder``)."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if url is None or url.startswith("journal:") or url.endswith((".journal", ".log")):
        path = folder / JOURNAL_NAME if url is None else Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError(f"storage {url!r}: not an Optuna storage URL (e.g. "
                          "sqlite:///study.db, postgresql://user@host/db) nor a .journal file")
    url = _postgres_driver(url)
    try:
        with warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna since 2.9; the warning is noise here.
            warnings.simplefilter("ignore", ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                  max_retry=MAX_RETRY))
    except (ImportError, ModuleNotFoundError) as exc:
        raise ConfigError(f"storage {display_url(url)}: a database driver is missing ({exc}); "
                          "for PostgreSQL: pip install 'autodim[postgres]'") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; all are user input
        raise ConfigError(f"storage {display_url(url)}: cannot open it "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _postgres_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, while ``autodim[postgres]``
    installs psycopg2; name psycopg2 explicitly when only it is there.
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return f"postgresql+psycopg2{sep}{rest}"
    return url


def display_url(url: str | None) -> str | None:
    """The URL without its password (safe to print and to write into ``study.json``)."""
    if url is None or "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is shown as given
        return url


def requeued_numbers(trials: Iterable[Any]) -> set[int]:
    """Numbers of failed trials that already have a re-queued copy (ours or Optuna's)."""
    out: set[int] = set()
    for t in trials:
        if "retry_of" in t.user_attrs:
            out.add(int(t.user_attrs["retry_of"]))
        out.update(int(n) for n in t.system_attrs.get("retry_history", []))
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(trial: Any, folder: Path, grace: float) -> bool:
    beat = folder / "trials" / f"{trial.number:05d}" / "heartbeat"
    if beat.exists() and time.time() - beat.stat().st_mtime <= grace:
        host, pid = trial.user_attrs.get("host"), trial.user_attrs.get("pid")
        if host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid():
            return not _pid_alive(pid)
        return False
    return True


def _requeue(study: Any, trial: Any) -> int | None:
    import optuna

    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= MAX_RETRY:
        return None
    attrs = {k: trial.user_attrs[k] for k in ("kind", "baseline", "budget")
             if k in trial.user_attrs}
    attrs.update(retry_of=trial.number, retries=retries + 1)
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params,
        distributions=trial.distributions, user_attrs=attrs))
    return trial.number


def recover_trials(study: Any, folder: Path, *, journal: bool, grace: float = GRACE_S,
                   echo: Callable[[str], None] | None = None) -> list[int]:
    """On resume: fail RUNNING trials left by a dead worker and re-queue their parameters;
    re-queue trials interrupted by Ctrl-C. Returns the numbers of the trials re-queued.

    RDB storages do this themselves through their heartbeat (see the module docstring);
    for them this only runs Optuna's own stale-trial check now, so that the count of
    trials still to run is right before the first new trial starts.
    """
    import optuna
    from optuna.trial import TrialState

    say = echo or (lambda _msg: None)
    done: list[int] = []
    if not journal:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    else:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not _is_stale(t, folder, grace):
                continue
            optuna.Trial(study, t._trial_id).set_user_attr(  # noqa: SLF001 - public ctor
                "fail_reason", "stale: its worker stopped before finishing (no heartbeat)")
            study.tell(t.number, state=TrialState.FAIL)
            if _requeue(study, t) is not None:
                done.append(t.number)
                say(f"trial {t.number} was left running by a stopped worker: failed and re-queued")
    trials = study.get_trials(deepcopy=False)
    seen = requeued_numbers(trials)
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in seen:
            if _requeue(study, t) is not None:
                done.append(t.number)
                say(f"trial {t.number} was interrupted: re-queued")
    return done


class Heartbeat:
    """Touch ``path`` every ``interval`` seconds while a trial runs (journal storages)."""

    def __init__(self, path: Path, interval: float = HEARTBEAT_S) -> None:
        self.path, self.interval = path, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Heartbeat":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._thread = threading.Thread(target=self._run, daemon=True, name="autodim-heartbeat")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.path.touch()
            except OSError:
                pass

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        try:
            self.path.unlink()
        except OSError:
            pass
