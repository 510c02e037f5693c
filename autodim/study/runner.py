"""Run a study: open (or resume) its storage, record the baselines, run the search trials.

The study's folder (``<output>/<name>/``) holds everything: ``study.journal`` (the default
storage), ``study.json`` (what the study is, so a folder can be loaded on its own),
``trials/00007/`` (per trial, its number in 5 digits: plan, searcher history and retrained
weights, written atomically) and ``pareto.csv`` / ``pareto.json``, rewritten after every trial.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from autodim._io import atomic_write_json
from autodim.budget import format_bytes, full_bytes, parse_budget
from autodim.errors import AutodimError, BudgetError, ConfigError, DataError
from autodim.study.config import SAMPLERS, StudyConfig

__all__ = ["run_study", "resolve_budgets", "load_study_data", "make_sampler", "StudyWarning",
           "MANIFEST_NAME"]

MANIFEST_NAME = "study.json"


class StudyWarning(UserWarning):
    """Something about a study is suspicious but not wrong (e.g. a budget above the full
    model)."""


def load_study_data(config: StudyConfig):
    """Load the study's dataset (errors name the study file and the ``dataset`` key)."""
    from autodim.data import load_data

    options = {k: v for k, v in config.dataset.items() if k != "source"}
    from autodim.progress import current

    where = f"{config.path or '<study>'}: dataset"
    try:
        with current().status(f"preparing data {config.dataset['source']}"):
            return load_data(config.dataset["source"], **options)
    except (DataError, ConfigError) as exc:
        raise DataError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise DataError(f"{where}: bad loader option ({exc})") from None


def _show(n: int) -> str:
    return f"{n:,} B" if n < 1000 else f"{n:,} B ({format_bytes(n)})"


def _precision_options(config: StudyConfig) -> list[tuple[int, str]]:
    """(bits, scale granularity) the compressor may give a field; float32 alone when off."""
    cs = config.search_space.compress
    if not cs.enabled:
        return [(32, "row")]
    bits = {b for v in cs.bits.candidates() for b in cs.parse_bits("compress.bits", v)}
    scales = {str(v) for v in cs.scale.candidates()}
    return [(b, sc) for b in sorted(bits | {32}) for sc in sorted(scales)]


def smallest_model_bytes(schema, D: int, dims: Sequence[int],
                         precisions: Sequence[tuple[int, str]] = ((32, "row"),)) -> int:
    """Bytes of the smallest model a study can ship: every field at its smallest candidate
    dim, each stored in the cheapest of ``precisions`` ((bits, scale granularity), packed,
    with its scales and offsets, as the compressor stores it). MEmCom hashing could go
    lower still and is not counted."""
    from autodim.compress import field_option
    from autodim.plan import DimensionPlan

    d = min(dims)
    plan = DimensionPlan.from_dims(schema, D, {n: d for n in schema.names})
    return sum(min(field_option(fp, d, b, None, scale=sc).num_bytes(D) for b, sc in precisions)
               for fp in plan.fields)


def resolve_budgets(config: StudyConfig, schema, warn: Callable[[str], None]) -> dict[str, int]:
    """Budget label -> bytes; below the smallest model the study can ship (at the lowest
    precision the compressor may choose) is an error, above the full model a warning."""
    full = full_bytes(schema, config.D)
    dims = [config.candidate_dims(m) for m in config.methods] or [(1,)]
    precisions = _precision_options(config)
    minimum = min(smallest_model_bytes(schema, config.D, d, precisions) for d in dims)
    out = {}
    for b in config.budgets:
        nbytes = parse_budget(b, full)
        if nbytes < minimum:
            at = "" if len(precisions) == 1 else " in its cheapest allowed precision"
            raise BudgetError(
                f"{config.path or '<study>'}: budgets: {b!r} = {_show(nbytes)} is below the "
                f"smallest feasible model, {_show(minimum)} (every field at its smallest "
                f"candidate dim{at}); adding 0 to the candidate dims, or fewer bits with "
                "compress.enabled, lowers it")
        if nbytes >= full:
            warn(f"budget {b!r} = {nbytes:,} B is not below the full D={config.D} model "
                 f"({full:,} B): nothing needs compressing")
        out[str(b)] = nbytes
    return out


def make_sampler(config: StudyConfig, seed_offset: int = 0):
    """The study's sampler. ``seed_offset`` (the number of trials already in the study)
    keeps a resumed run, or a second worker, from replaying the first one's draws."""
    import optuna

    s = dict(config.sampler)
    name, seed = s.pop("name"), (int(s.pop("seed", config.seed)) + seed_offset) % 2**32
    spec = SAMPLERS[name]
    kwargs: dict[str, Any] = {**spec.defaults, **s}
    kwargs.update({arg: kwargs[source] for arg, source in spec.linked.items()})
    with warnings.catch_warnings():
        if spec.experimental:
            # e.g. TPE's multivariate/group/constant_liar: the warning is noise.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return getattr(optuna.samplers, spec.cls)(seed=seed, **kwargs)


def _seed_offset(study, resume: bool) -> int:
    """The sampler's seed offset: the trials already there and, for ``--resume`` (how every
    worker of a shared study is started), this process, so that workers started together,
    who see the same trials, do not draw the same parameters and run the same trial twice.
    A fresh single-worker run stays reproducible."""
    import os
    import socket
    import zlib

    offset = len(study.trials)
    if resume:
        offset += 1000 * (zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
                          % 1_000_003)
    return offset % (2**31 - 1)


def _snapshot(config: StudyConfig, data, budgets: dict[str, int]) -> dict[str, Any]:
    """What must not change when a study is resumed (it defines the search space)."""
    import json

    from autodim.study.storage import data_identity

    snap = {"methods": list(config.methods), "budgets": budgets,
            "objectives": list(config.objectives), "D": config.D, "backbone": config.backbone,
            "backbone_kwargs": dict(config.backbone_kwargs),
            "schema_fingerprint": data.schema.fingerprint(),
            "data": data_identity(data, config.dataset),
            "search_space": config.search_space.to_dict()}
    return json.loads(json.dumps(snap, default=str))  # as the storage gives it back


def _check_resumable(study, snap: dict[str, Any], name: str) -> None:
    from autodim.study.storage import _short, first_difference

    old = study.user_attrs.get("autodim_space")
    if not old:
        return
    for key, label in (("schema_fingerprint", "dataset (schema fingerprint)"),
                       ("data", "dataset"), ("methods", "methods"), ("budgets", "budgets"),
                       ("objectives", "objectives"), ("D", "D"), ("backbone", "backbone"),
                       ("backbone_kwargs", "backbone_kwargs"),
                       ("search_space", "search space")):
        if key not in old:
            continue  # a study made before this was recorded
        diff = first_difference(old.get(key), snap.get(key))
        if diff is not None:
            where, was, now = diff
            raise ConfigError(f"cannot resume study {name!r}: its {label} changed from "
                              f"{_short(was)} to {_short(now)}" + (f" (at {where})" if where
                                                                    else "")
                              + "; a study's data and search space must stay the same (use "
                              "--out-dir for a new study)")


def _counts(study) -> tuple[int, int, int]:
    """(search trials done, search trials running, trials waiting)."""
    from optuna.trial import TrialState

    from autodim.study.storage import search_trials_counted

    trials = study.get_trials(deepcopy=False)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    return (*search_trials_counted(trials), waiting)


def _wait_for_others(study) -> bool:
    """RDB storages (many workers): before leaving, wait while other workers' trials run.

    A worker that died mid-trial stops beating; once its trial is older than the grace
    period it is failed and re-queued (Optuna's heartbeat + retry callback), and this
    worker runs it, instead of leaving the study one trial short. Returns whether anything
    was waited for (the caller then looks for new work).
    """
    import time

    import optuna
    from optuna.trial import TrialState

    from autodim.study import storage as _storage

    waited = False
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        waited = True
        time.sleep(min(float(_storage.HEARTBEAT_S), 2.0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            break
    return waited


def _enqueue_baselines(study, config: StudyConfig, budgets: dict[str, int], schema,
                       warn: Callable[[str], None], say: Callable[[str], None]) -> int:
    from autodim.baselines import baseline_plan
    from autodim.searchers import list_searchers

    labels = list(budgets)

    have = {(t.user_attrs.get("baseline"), t.user_attrs.get("budget"))
            for t in study.get_trials(deepcopy=False) if t.user_attrs.get("kind") == "baseline"}
    added = 0
    for name in config.baselines:
        if name == "magprune" and "magprune" not in list_searchers():
            warn("baseline 'magprune' is not registered in this installation: skipped")
            continue
        # The full model is the same plan whatever the budget: record it once.
        for label in labels[:1] if name == "full" else labels:
            if (name, label) in have:
                continue
            if name not in ("full", "magprune"):
                try:  # building a baseline plan takes milliseconds: check it can exist
                    baseline_plan(name, schema, config.D, budgets[label])
                except BudgetError as exc:
                    say(f"baseline {name} at {label}: not recorded ({exc})")
                    continue
            params: dict[str, Any] = {"baseline": name}
            if len(labels) > 1:
                params["budget"] = label
            study.enqueue_trial(params, user_attrs={"kind": "baseline", "baseline": name,
                                                    "budget": label})
            added += 1
    return added


def _enqueue_next_budget(study, labels: list[str]) -> None:
    """Give search trials the budgets in turn (the other parameters are still sampled).

    Left to the sampler, the budget would drift to wherever the front is easiest to
    extend, and a two-budget study could end with no trial at one of them.
    """
    started = sum(1 for t in study.get_trials(deepcopy=False)
                  if t.user_attrs.get("kind", "search") == "search")
    label = labels[started % len(labels)]
    study.enqueue_trial({"budget": label}, user_attrs={"kind": "search"})


def _references(study):
    """A callable listing the finished feasible trials (the pruning rule's references)."""
    from autodim.study.objective import Reference

    def refs() -> list[Reference]:
        from optuna.trial import TrialState

        out = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            a = t.user_attrs
            if a.get("feasible") and a.get("val_auc") is not None and a.get("bytes") is not None:
                out.append(Reference(int(a["bytes"]), float(a["val_auc"]), t.number))
        return out

    return refs


def trial_line(t, done: int | None = None, total: int | None = None) -> str:
    """One progress line for a finished trial."""
    from optuna.trial import TrialState

    a = t.user_attrs
    head = f"trial {t.number:>3}"
    if done is not None and total is not None:
        # Baseline lines get blanks of the tag's width, so the columns stay aligned.
        width = 2 * len(str(total)) + 3
        tag = f"[{done}/{total}]" if a.get("kind", "search") == "search" else ""
        head += f" {tag:<{width}}"
    what = a.get("method") or a.get("kind", "?")
    if len(what) > 18:
        what = what[:17] + "…"
    head = f"{head} {what:<18} {a.get('budget', '')}"
    secs = a.get("wall_seconds")
    tail = f" ({secs:.1f} s)" if isinstance(secs, (int, float)) else ""
    if t.state == TrialState.COMPLETE:
        feas = "" if a.get("feasible", True) else "  OVER BUDGET"
        if "duplicate_of" in a:
            feas += f"  (same parameters as trial {a['duplicate_of']}: result reused)"
        from autodim.metrics import format_auc

        test_s = f" test AUC {format_auc(a.get('test_auc'))}" if "test_auc" in a else ""
        return (f"{head}: val AUC {format_auc(a.get('val_auc'))}{test_s}  "
                f"{int(a.get('bytes', 0)):,} B ({a.get('compression', 0):.1f}x){feas}{tail}")
    if t.state == TrialState.PRUNED:
        p = a.get("prune_reason") or {}
        if "reason" in p:
            return f"{head}: pruned: {p['reason']}{tail}"
        return (f"{head}: pruned at epoch {p.get('epoch', '?')} (val AUC "
                f"{p.get('val_auc', math.nan):.4f}, at most {p.get('bound', math.nan):.4f} at "
                f"its pace, vs {p.get('reference_val_auc', math.nan):.4f} of trial "
                f"{p.get('reference_trial', '?')}){tail}")
    return f"{head}: failed: {a.get('fail_reason', t.state.name)}{tail}"


def run_study(config: StudyConfig, *, n_trials: int | None = None, storage: str | None = None,
              resume: bool = False, methods: list[str] | None = None,
              out_dir: str | Path | None = None, data=None,
              echo: Callable[[str], None] | None = None,
              warn: Callable[[str], None] | None = None, threads: int | None = None):
    """Run (or resume) a study and return its :class:`~autodim.study.result.StudyResult`.

    Args:
        config: The validated study file.
        n_trials: Search trials the study should hold when done (default: the file's);
            baselines come on top. On resume, finished trials count, so ``--resume`` after a
            crash only runs the rest.
        storage: Optuna storage URL overriding the file's (default: a journal file).
        resume: Continue an existing study (an existing study without it is an error).
        methods: Restrict the study to these methods.
        out_dir: The study's folder (default ``<output>/<name>``).
        data: An already loaded dataset (default: load the file's ``dataset``).
        echo: Called with one progress line per trial (``None``: silent).
        warn: Called with warnings (default: :func:`warnings.warn` with
            :class:`StudyWarning`).
        threads: torch CPU threads while the study runs (default: the file's ``threads``);
            the previous setting is restored afterwards.

    Raises:
        ConfigError, DataError, BudgetError: bad study, data or budget (nothing is run).
        AutodimError: every search trial failed.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads or config.threads))
    try:
        return _run_study(config, n_trials=n_trials, storage=storage, resume=resume,
                          methods=methods, out_dir=out_dir, data=data, echo=echo, warn=warn)
    finally:
        torch.set_num_threads(previous)


def _run_study(config: StudyConfig, *, n_trials, storage, resume, methods, out_dir, data,
               echo, warn):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.trial import TrialState

    from autodim.progress import current as current_progress
    from autodim.study.objective import TrialObjective
    from autodim.study.result import StudyResult
    from autodim.study.storage import (
        display_url,
        open_storage,
        recover_trials,
        taken_over,
        worker_heartbeat,
    )

    say = echo or (lambda _m: None)
    warn = warn or (lambda m: warnings.warn(m, StudyWarning, stacklevel=3))
    if methods:
        config = config.with_methods(methods)
    if n_trials is not None:
        if n_trials < 0:
            raise ConfigError(f"--n-trials must be >= 0, got {n_trials}")
        config = replace(config, n_trials=int(n_trials))
    folder = Path(out_dir) if out_dir is not None else config.output_dir
    url = storage if storage is not None else config.storage
    data = data if data is not None else load_study_data(config)
    budgets = resolve_budgets(config, data.schema, warn)
    labels = list(budgets)
    from autodim.models import create_backbone

    try:  # bad backbone_kwargs: one error now, not every trial failing on it
        create_backbone(config.backbone, data.schema.num_fields, config.D,
                        **config.backbone_kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{config.path or '<study>'}: {exc}") from None

    folder.mkdir(parents=True, exist_ok=True)
    store = open_storage(url, folder, warn=warn)
    journal = isinstance(store, JournalStorage)
    where = display_url(url) or str(folder / "study.journal")
    old_level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    stack = contextlib.ExitStack()
    try:
        exists = config.name in optuna.get_all_study_names(store)
        if exists and not resume:
            n = len(optuna.load_study(study_name=config.name, storage=store).trials)
            if n:
                raise ConfigError(f"study {config.name!r} already exists in {where} with {n} "
                                  "trial(s): pass --resume to continue it, or --out-dir for a "
                                  "new one")
        # load_study when it exists: create_study(load_if_exists=True) appends a (failing)
        # "create" record to a journal even when it only loads, so a refused resume would
        # still have written to the study's storage.
        study = (optuna.load_study(study_name=config.name, storage=store) if exists else
                 optuna.create_study(study_name=config.name, storage=store,
                                     directions=config.directions, load_if_exists=True))
        if list(study.directions) != [optuna.study.StudyDirection[d.upper()]
                                      for d in config.directions]:
            raise ConfigError(f"cannot resume study {config.name!r}: its objectives' directions "
                              f"differ from {config.objectives}")
        snap = _snapshot(config, data, budgets)
        _check_resumable(study, snap, config.name)
        if list(study.metric_names or []) != list(config.objectives):
            with warnings.catch_warnings():  # "experimental" in Optuna: noise here
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(config.objectives))  # named in optuna-dashboard
        if not study.user_attrs.get("autodim_space"):
            study.set_user_attr("autodim_space", snap)
            study.set_user_attr("autodim_config", config.to_dict())
            study.set_user_attr("bayes_auc", data.meta.get("bayes_auc"))
            study.set_user_attr("full_bytes", full_bytes(data.schema, config.D))
        _write_manifest(folder, config, url, budgets, data)
        if journal:  # this worker beats from before its first trial (autodim.study.storage)
            beat = worker_heartbeat(folder)
            beat.__enter__()
            stack.callback(beat.__exit__, None, None, None)
        if resume:
            recover_trials(study, folder, journal=journal, echo=say)
        _enqueue_baselines(study, config, budgets, data.schema, warn, say)
        study.sampler = make_sampler(config, seed_offset=_seed_offset(study, resume))

        objective = TrialObjective(config, data, budgets, folder, journal=journal,
                                   references=_references(study))
        result = StudyResult(study, folder)
        done, running, waiting = _counts(study)
        say(f"study {config.name!r}: {len(config.methods)} method(s) "
            f"({', '.join(config.methods)}), budget(s) "
            + ", ".join(f"{k} = {format_bytes(v)}" for k, v in budgets.items())
            + f"; {config.n_trials} search trial(s) ({done} done) + {waiting} queued; "
              f"storage {where}")
        ran: list[Any] = []
        shown = current_progress()
        shown.start_trials(config.n_trials, min(done, config.n_trials))
        while True:
            while waiting > 0 or done + running < config.n_trials:
                if waiting == 0 and len(labels) > 1:
                    _enqueue_next_budget(study, labels)
                try:
                    study.optimize(objective, n_trials=1, catch=(Exception,),
                                   callbacks=[lambda _study, trial: ran.append(trial)])
                # "Cannot tell a FAIL trial" (or Optuna's assert after it): taken over?
                except (ValueError, AssertionError):
                    if not taken_over(study, objective.current):
                        raise
                    say(f"trial {objective.current}: another worker judged this one stopped "
                        "and failed it (it is re-run under a new number); this worker's "
                        "result for it is dropped, going on")
                done, running, waiting = _counts(study)
                result.write_pareto()
                if ran:
                    last = ran.pop()
                    say(trial_line(last, done, config.n_trials))
                    if last.state == TrialState.FAIL and last.user_attrs.get("requeue"):
                        raise AutodimError(
                            f"trial {last.number} failed: {last.user_attrs.get('fail_reason')}"
                            " (not counted; --resume re-runs it once this is fixed)")
                shown.trial_done(min(done, config.n_trials), _best_so_far(study))
            if journal or not _wait_for_others(study):
                break
            done, running, waiting = _counts(study)
    finally:
        stack.close()
        optuna.logging.set_verbosity(old_level)
    result.write_pareto()
    search = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("kind") == "search"]
    if config.n_trials and search and not any(t.state == TrialState.COMPLETE for t in search):
        failed = [t for t in search if t.state == TrialState.FAIL]
        if failed and len(failed) == len(search):
            raise AutodimError(f"all {len(failed)} search trial(s) of study {config.name!r} "
                               f"failed; first reason: {failed[0].user_attrs.get('fail_reason')}")
    return result


def _best_so_far(study) -> str | None:
    """The best feasible search trial so far, for the progress display."""
    from optuna.trial import TrialState

    best = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if a.get("kind") == "search" and a.get("feasible") and a.get("val_auc") is not None:
            if best is None or a["val_auc"] > best.user_attrs["val_auc"]:
                best = t
    if best is None:
        return None
    a = best.user_attrs
    return (f"val AUC {a['val_auc']:.4f} at {format_bytes(int(a.get('bytes', 0)))} "
            f"(trial {best.number})")


def _write_manifest(folder: Path, config: StudyConfig, url: str | None,
                    budgets: dict[str, int], data) -> None:
    from autodim.study.storage import JOURNAL_NAME, display_url

    path = folder / MANIFEST_NAME
    created = None
    if path.exists():
        import json

        try:
            created = json.loads(path.read_text()).get("created")
        except (OSError, ValueError):
            created = None
    atomic_write_json(path, {
        "format": "autodim.study", "version": 1, "name": config.name,
        "storage": display_url(url), "journal": JOURNAL_NAME if url is None else None,
        "budgets": budgets, "full_bytes": full_bytes(data.schema, config.D),
        "bayes_auc": data.meta.get("bayes_auc"),
        "schema_fingerprint": data.schema.fingerprint(), "config": config.to_dict(),
        "created": created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
