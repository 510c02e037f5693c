"""Where a study lives, and how it recovers from a crash.

- Default: a journal file, ``<output>/<name>/study.journal`` (``JournalStorage`` +
  ``JournalFileBackend``): no server, safe for several processes on one machine or a
  shared file system.
- Any Optuna storage URL (``sqlite:///…``, ``postgresql://…``; PostgreSQL for many workers
  on many machines). RDB storages get Optuna's heartbeat: a worker that dies stops beating,
  and after ``GRACE_S`` its trial is failed and re-queued by
  :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` (the successor of
  ``RetryFailedTrialCallback``, deprecated since Optuna 4.9).
- Journal files have no heartbeat in Optuna. Here each worker touches
  ``workers/<host>.<pid>`` every ``HEARTBEAT_S`` from before its first trial to its end, and
  each trial records its host and pid and touches ``trials/<n>/heartbeat``. On ``--resume``,
  :func:`recover_trials` (under a lock file, so two resumers never judge the same trial)
  fails RUNNING trials whose worker is gone and enqueues their parameters again:

  * a worker on this host is judged by its pid alone: a live pid is never failed, however
    old its heartbeat (a paused process, a skewed clock);
  * a worker on another host by its heartbeats (older than ``GRACE_S``: stale);
  * a trial whose owner is not recorded yet (killed between Optuna creating it and the
    first attribute write) is stale once no other worker of the study can be alive or it
    is older than ``GRACE_S``.

  Failing is idempotent: the trial is marked ``requeue`` before it is failed, and every
  failed trial marked so without a re-queued copy gets one on the next resume, so a kill
  between the two steps loses nothing. Trials stopped by Ctrl-C or by an OSError (a full
  disk) are re-queued the same way; none of these count towards ``n_trials``.
- Before a journal is opened its tail is checked: a torn last record (kill -9 or a full
  disk mid-append) is cut off with a warning naming what was dropped; a corrupt record
  elsewhere is an error naming the file and line.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from autodim.errors import ConfigError

__all__ = ["open_storage", "display_url", "recover_trials", "requeued_numbers", "Heartbeat",
           "worker_heartbeat", "check_journal", "taken_over", "counts_as_done", "data_identity",
           "search_trials_counted",
           "first_difference",
           "HEARTBEAT_S", "GRACE_S", "MAX_RETRY", "JOURNAL_NAME"]

HEARTBEAT_S = 30
GRACE_S = 120
MAX_RETRY = 2
JOURNAL_NAME = "study.journal"
WORKERS_DIR = "workers"
LOCK_NAME = ".recover.lock"
#: (folder, trial number) of the trials this process is running now.
_ACTIVE: set[tuple[str, int]] = set()


def open_storage(url: str | None, folder: Path, *, warn: Callable[[str], None] | None = None):
    """An Optuna storage for ``url`` (``None``: the journal file in ``folder``); a journal's
    tail is checked (and a torn last record cut off) first, see :func:`check_journal`."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

    if url is None or url.startswith("journal:") or url.endswith((".journal", ".log")):
        path = folder / JOURNAL_NAME if url is None else Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        check_journal(path, warn)
        return JournalStorage(_checked_backend(path, warn))
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


def check_journal(path: Path, warn: Callable[[str], None] | None = None) -> None:
    """Check a journal file before Optuna reads or appends to it.

    A last line without its newline is a torn append (kill -9 or a full disk mid-write):
    Optuna would glue the next record onto it and every later read would fail, so it is cut
    off (under Optuna's own journal lock, so a record another worker is writing right now
    is not mistaken for a torn one) and ``warn`` names what was dropped. A line elsewhere
    that is not a JSON record is an error naming the file and line: that is damage this
    cannot repair.
    """
    import json

    from autodim.errors import ConfigError

    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        torn = fh.read(1) != b"\n"
    if torn:
        _cut_torn_tail(path, warn)
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{path}:{lineno}: corrupt journal record ({exc}); restore "
                                  "the file from a copy or start a new study") from None
            if not isinstance(record, dict) or "op_code" not in record:
                raise ConfigError(f"{path}:{lineno}: not an Optuna journal record")


def _cut_torn_tail(path: Path, warn: Callable[[str], None] | None) -> None:
    from optuna.storages.journal import JournalFileSymlinkLock
    from optuna.storages.journal._file import get_lock_file

    with get_lock_file(JournalFileSymlinkLock(str(path))):
        _cut_tail_locked(path, warn)


def _cut_tail_locked(path: Path, warn: Callable[[str], None] | None) -> None:
    """Cut ``path`` back to its last newline (the caller holds the journal lock)."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        start = max(0, size - (1 << 20))
        while True:  # find the last newline, reading backwards in 1 MiB blocks
            fh.seek(start)
            block = fh.read(size - start)
            cut = block.rfind(b"\n")
            if cut >= 0 or start == 0:
                break
            start = max(0, start - (1 << 20))
        keep = start + cut + 1 if cut >= 0 else 0
        fh.seek(keep)
        dropped = fh.read(min(size - keep, 120))
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    line = 1 + _count_lines(path)
    msg = (f"{path}:{line}: the last journal record was torn (an interrupted write); cut "
           f"off {size - keep} byte(s): {dropped.decode('utf-8', 'replace')!r}"
           + ("…" if size - keep > 120 else ""))
    (warn or (lambda m: warnings.warn(m, stacklevel=3)))(msg)


def _checked_backend(path: Path, warn: Callable[[str], None] | None):
    """Optuna's journal file backend, checking the tail before every append: a worker
    killed mid-append must not have the next record (another worker's) glued onto its torn
    one, which would corrupt the journal for every reader."""
    from optuna.storages.journal import JournalFileBackend
    from optuna.storages.journal._file import get_lock_file

    class CheckedJournalFileBackend(JournalFileBackend):
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            # As JournalFileBackend.append_logs, plus the tail check under the same lock.
            with get_lock_file(self._lock):
                _cut_tail_locked(Path(self._file_path), warn)
                _append_records(self._file_path, logs)

    return CheckedJournalFileBackend(str(path))


def _append_records(file_path: str, logs: list[dict[str, Any]]) -> None:
    """Append journal records, one JSON per line, as Optuna does (the caller holds the
    lock)."""
    import json

    text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
    with open(file_path, "ab") as f:
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


def data_identity(data: Any, options: dict[str, Any]) -> dict[str, Any]:
    """What a resumed study's data must match: rows per split, a content hash of each
    split's labels and ids, and the loader options (the ``dataset`` entry but its
    ``source``, which may name the same file by another path)."""
    import hashlib
    import json

    import numpy as np

    h = hashlib.blake2b(digest_size=16)
    rows = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name, None)
        if split is None:
            continue
        rows[name] = len(split)
        for arr in (split.labels, split.ids):
            a = np.ascontiguousarray(arr)
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            flat = a.reshape(-1).view(np.uint8)
            for lo in range(0, flat.size, 1 << 26):  # 64 MiB at a time (memory-mapped ids)
                h.update(flat[lo:lo + (1 << 26)])
    opts = {k: v for k, v in options.items() if k != "source"}
    return {"rows": rows, "content_hash": h.hexdigest(),
            "loader_options": json.loads(json.dumps(opts, sort_keys=True, default=str))}


def first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """Where two JSON-like values first differ: ``(path, old part, new part)`` (path ``""``
    for the values themselves), ``None`` if equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            where = f"{path}.{k}" if path else str(k)
            if k in old and k in new:
                if old[k] != new[k]:
                    return first_difference(old[k], new[k], where)
            else:
                return where, old.get(k, "<absent>"), new.get(k, "<absent>")
        return None
    return None if old == new else (path, old, new)


def _short(v: Any, n: int = 120) -> str:
    text = repr(v)
    return text if len(text) <= n else text[:n - 1] + "…"


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


def _proc_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux ``/proc``; ``None`` elsewhere): tells a reused
    pid from the worker that had it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def worker_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"


def worker_heartbeat(folder: Path) -> "Heartbeat":
    """This process's heartbeat in ``folder/workers/`` (entered before its first trial)."""
    return Heartbeat(folder / WORKERS_DIR / worker_name())


def _fresh(path: Path, now: float, grace: float) -> bool | None:
    """Whether ``path`` was touched within ``grace`` seconds (``None``: no such file)."""
    try:
        return now - path.stat().st_mtime <= grace
    except OSError:
        return None


def _alive(host: Any, pid: Any, start: Any, folder: Path, now: float, grace: float
           ) -> bool | None:
    """Whether worker ``host``/``pid`` can be running (``None``: no way to tell)."""
    if host == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid():
            return False  # this process runs nothing of the study's yet (or it is active)
        if not _pid_alive(pid):
            return False
        now_start = _proc_start(pid)
        return start is None or now_start is None or now_start == start
    if host is None or not isinstance(pid, int):
        return None
    return _fresh(folder / WORKERS_DIR / f"{host}.{pid}", now, grace)


def _any_other_worker_alive(folder: Path, now: float, grace: float) -> bool:
    root = folder / WORKERS_DIR
    if not root.is_dir():
        return False
    for p in root.iterdir():
        host, _, pid = p.name.rpartition(".")
        if not pid.isdigit():
            continue
        if host == socket.gethostname():
            if int(pid) != os.getpid() and _pid_alive(int(pid)):
                return True
        elif _fresh(p, now, grace):
            return True
    return False


def _age(trial: Any, now: float) -> float:
    start = getattr(trial, "datetime_start", None)
    return now - start.timestamp() if start is not None else float("inf")


def _fs_now(folder: Path) -> float:
    """"Now" by the clock that stamps the study folder's files: on a shared disk a file's
    mtime comes from the file server, so heartbeat ages are measured against a file touched
    now, not against this host's (possibly skewed) clock."""
    probe = folder / LOCK_NAME
    try:
        probe.touch()
        return probe.stat().st_mtime
    except OSError:
        return time.time()


def _is_stale(trial: Any, folder: Path, grace: float, now: float | None = None) -> bool:
    """Whether a RUNNING trial's worker is gone (see the module docstring for the rules)."""
    if (str(folder), trial.number) in _ACTIVE:
        return False
    now = _fs_now(folder) if now is None else now
    a = trial.user_attrs
    host, pid = a.get("host"), a.get("pid")
    alive = _alive(host, pid, a.get("pid_start"), folder, now, grace)
    if host == socket.gethostname() and isinstance(pid, int):
        return not alive  # the pid decides on this host, never the heartbeat's age
    if host is None:  # created, owner not written yet: is any worker left to own it?
        return _age(trial, now) > grace or not _any_other_worker_alive(folder, now, grace)
    beat = _fresh(folder / "trials" / f"{trial.number:05d}" / "heartbeat", now, grace)
    if beat or alive:
        return False
    if beat is None and alive is None:  # another host's trial before its first beat
        return _age(trial, now) > grace
    return True


def taken_over(study: Any, number: int | None) -> bool:
    """Whether trial ``number`` (run by this process) was failed as stale by a resumer."""
    if number is None:
        return False
    try:
        t = study.get_trials(deepcopy=False)[number]
    except IndexError:
        return False
    from optuna.trial import TrialState

    return t.state == TrialState.FAIL and str(t.user_attrs.get("fail_reason", "")).startswith(
        "stale")


def counts_as_done(trial: Any, requeued: set[int]) -> bool:
    """Whether a failed trial counts towards ``n_trials``: not when it has been, or will be,
    re-queued, nor when its worker stopped or its disk filled (the failure is the
    machine's, not the method's), even past the retry limit."""
    a = trial.user_attrs
    # A trial failed without a reason was failed from outside (Optuna's RDB heartbeat: its
    # worker died). It counts until its retry exists: Optuna fails it and creates the retry
    # in two steps, and not counting it in between lets another worker sample one trial too
    # many (measured: 1 run in 3 with three PostgreSQL workers). Once re-queued it is in
    # ``requeued`` and stops counting.
    return trial.number not in requeued and not (a.get("requeue") or a.get("interrupted"))


def search_trials_counted(trials: Sequence[Any], *, before: int | None = None
                          ) -> tuple[int, int]:
    """(search trials done, search trials running) towards ``n_trials``: complete and pruned
    ones, failed ones that :func:`counts_as_done`, and running ones; with ``before``, only
    those numbered below it."""
    from optuna.trial import TrialState

    again = requeued_numbers(trials)
    done = running = 0
    for t in trials:
        if (before is not None and t.number >= before
                or t.user_attrs.get("kind", "search") != "search"):
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
                t.state == TrialState.FAIL and counts_as_done(t, again)):
            done += 1
        elif t.state == TrialState.RUNNING:
            running += 1
    return done, running


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


@contextlib.contextmanager
def _recover_lock(folder: Path):
    """An exclusive lock on ``folder/.recover.lock`` while trials are judged and failed, so
    two resumers never fail (and re-queue) the same trial twice."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): one resumer at a time is then the user's job
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def recover_trials(study: Any, folder: Path, *, journal: bool, grace: float = GRACE_S,
                   echo: Callable[[str], None] | None = None) -> list[int]:
    """On resume: fail RUNNING trials left by a dead worker and re-queue their parameters;
    re-queue trials interrupted by Ctrl-C or an OSError. Returns the numbers re-queued.

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
    with _recover_lock(folder) if journal else contextlib.nullcontext():
        if journal:
            now = _fs_now(folder)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if not _is_stale(t, folder, grace, now):
                    continue
                try:
                    trial = optuna.Trial(study, t._trial_id)  # noqa: SLF001 - public ctor
                    # Marked first: a kill after this and before the re-queue below is
                    # mended by the next resume (a marked failed trial without its copy).
                    trial.set_user_attr("fail_reason", "stale: its worker stopped before "
                                        "finishing (no heartbeat, no live process)")
                    trial.set_user_attr("requeue", True)
                    study.tell(t.number, state=TrialState.FAIL)
                except (ValueError, RuntimeError):
                    continue  # it finished meanwhile: its worker was alive after all
        trials = study.get_trials(deepcopy=False)
        seen = requeued_numbers(trials)
        for t in trials:
            a = t.user_attrs
            if t.state != TrialState.FAIL or t.number in seen:
                continue
            if not (a.get("requeue") or a.get("interrupted")):
                continue
            if _requeue(study, t) is not None:
                done.append(t.number)
                why = ("was interrupted" if a.get("interrupted") else
                       "was left running by a stopped worker" if str(
                           a.get("fail_reason", "")).startswith("stale") else
                       f"failed ({a.get('fail_reason')})")
                say(f"trial {t.number} {why}: re-queued")
            else:
                say(f"trial {t.number} stopped {int(a.get('retries', 0)) + 1} time(s): "
                    "not re-queued again (a new trial takes its place)")
    return done


class Heartbeat:
    """Touch ``path`` every ``interval`` seconds while a trial runs (journal storages)."""

    def __init__(self, path: Path, interval: float = HEARTBEAT_S, *,
                 trial: tuple[Path, int] | None = None) -> None:
        self.path, self.interval = path, interval
        # (study folder, trial number): the trial counts as running in this process.
        self.key = (str(trial[0]), trial[1]) if trial is not None else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Heartbeat":
        if self.key is not None:
            _ACTIVE.add(self.key)
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
        _ACTIVE.discard(self.key)  # type: ignore[arg-type]
        if self._thread is not None:
            self._thread.join(timeout=1)
        try:
            self.path.unlink()
        except OSError:
            pass
