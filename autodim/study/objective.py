"""One trial of a study: sample -> search -> compact plan (+ MEmCom) -> retrain -> record.

A search trial samples a method and its hyperparameters from the search space, runs the
searcher under ``inflate x budget``, fits the result into the budget with MEmCom
(:func:`autodim.compress.compact_plan`; with ``compress.enabled``, the dims x bits x hashing
compressor :func:`autodim.compress.compress_plan`), retrains the compact model with early stopping
on validation AUC and returns the study's objectives (by default ``(val AUC, bytes)``);
``trial.set_constraint("bytes_over_budget", bytes - budget)`` carries feasibility, which
Optuna 5's samplers read from the trial itself.

A baseline trial (enqueued with ``user_attrs={"kind": "baseline"}``) builds a baseline plan
from :mod:`autodim.baselines` (or runs ``magprune``, whose plan is measured without a
retrain) and records it the same way, so baselines sit on the same Pareto front.

Multi-objective studies cannot use Optuna's pruners (``trial.report`` is single-objective
only), so :class:`PruneHopeless` stops a retrain that, even continuing at its current pace,
would stay more than ``margin`` below a finished feasible trial using no more bytes: it
would end up dominated. Such trials are recorded as PRUNED.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from lightning.pytorch.callbacks import Callback

from autodim._io import atomic_write_json
from autodim.budget import full_bytes, min_feasible_bytes
from autodim.data.datamodule import CTRDataModule
from autodim.data.dataset import CTRData
from autodim.errors import AutodimError, BudgetError
from autodim.plan import DimensionPlan
from autodim.study.compact import compact_plan
from autodim.study.config import BASELINE_NAMES, StudyConfig, TrainSettings
from autodim.study.storage import Heartbeat, search_trials_counted
from autodim.task import TrainingDiverged

__all__ = ["TrialObjective", "PruneHopeless", "Reference", "trial_folder", "PLAN_ATTR_LIMIT"]

#: Plans whose JSON is longer than this (row/element masks of big tables) are kept only as
#: files; smaller ones also go into the trial's user attrs, so any storage holds them.
PLAN_ATTR_LIMIT = 100_000


def trial_folder(folder: Path, number: int) -> Path:
    return folder / "trials" / f"{number:05d}"


@dataclass(frozen=True)
class Reference:
    """A finished feasible trial the pruning rule compares against."""

    num_bytes: int
    val_auc: float
    number: int


class PruneHopeless(Callback):
    """Stop a retrain that cannot reach the Pareto front (see the module docstring).

    From epoch ``after_epochs`` on, the run's best validation AUC is extrapolated
    optimistically: its last epoch's gain repeated for every epoch it has left. If even that
    stays more than ``margin`` below the final validation AUC of a finished feasible trial
    that uses no more bytes, the run would end up dominated, and it stops. Learning curves
    are concave, so the bound rarely stops a run that would have made it; it keeps slow
    starters (bigger plans often gain several AUC points after their second epoch) and cuts
    runs that have flattened out below the front.

    Args:
        references: Finished feasible trials.
        num_bytes: Bytes of the plan being trained.
        max_epochs: Epochs the run may take in all.
        after_epochs: Epochs before the rule may fire (at least 2: it needs a gain).
        margin: How far below the reference is hopeless.
    """

    def __init__(self, references: Sequence[Reference], num_bytes: int, *, max_epochs: int,
                 after_epochs: int, margin: float) -> None:
        eligible = [r for r in references if r.num_bytes <= num_bytes]
        self.reference = max(eligible, key=lambda r: r.val_auc) if eligible else None
        self.max_epochs = max_epochs
        self.after_epochs, self.margin = max(2, after_epochs), margin
        self.curve: list[float] = []
        self.pruned: dict[str, Any] | None = None

    def bound(self) -> float:
        """The best AUC the run could reach at its current pace."""
        gain = max(0.0, self.curve[-1] - self.curve[-2])
        return max(self.curve) + gain * (self.max_epochs - len(self.curve))

    def on_validation_end(self, trainer, pl_module) -> None:
        auc = trainer.callback_metrics.get("val_auc")
        if auc is None or trainer.sanity_checking:
            return
        self.curve.append(float(auc))
        epoch = len(self.curve)
        if self.reference is None or epoch < self.after_epochs or self.pruned:
            return
        if self.bound() < self.reference.val_auc - self.margin:
            self.pruned = {"epoch": epoch, "val_auc": max(self.curve),
                           "bound": round(self.bound(), 6),
                           "reference_trial": self.reference.number,
                           "reference_val_auc": self.reference.val_auc}
            trainer.should_stop = True


class TrialObjective:
    """The callable ``study.optimize`` runs (one instance per ``run_study``)."""

    def __init__(self, config: StudyConfig, data: CTRData, budgets: dict[str, int],
                 folder: Path, *, journal: bool,
                 references: Callable[[], list[Reference]]) -> None:
        self.config, self.data, self.budgets, self.folder = config, data, budgets, folder
        self.journal = journal
        self.references = references
        self.labels = [str(b) for b in config.budgets]
        self.current: int | None = None  # the trial being run (or last run)

    # -- entry point ------------------------------------------------------------------------
    def __call__(self, trial) -> list[float]:
        import optuna

        from autodim.study.storage import _proc_start

        t0 = time.perf_counter()
        self.current = trial.number
        kind = trial.user_attrs.get("kind", "search")
        folder = trial_folder(self.folder, trial.number)
        # Journal storages have no heartbeat of their own (see autodim.study.storage). It
        # starts before the first write about this trial, and the owner is written first.
        beat = (Heartbeat(folder / "heartbeat", trial=(self.folder, trial.number))
                if self.journal else contextlib.nullcontext())
        try:
            beat.__enter__()
            # host last: a trial with a host has its pid (storage._is_stale relies on it).
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("pid_start", _proc_start(os.getpid()))
            trial.set_user_attr("host", socket.gethostname())
            trial.set_user_attr("kind", kind)
            if kind == "baseline":
                self._skip_if_enqueued_twice(trial)
            else:
                self._skip_if_surplus(trial)
            label = (trial.suggest_categorical("budget", self.labels) if len(self.labels) > 1
                     else self.labels[0])
            trial.set_user_attr("budget", label)
            budget = self.budgets[label]
            trial.set_user_attr("budget_bytes", budget)
            if kind == "baseline":
                values = self._baseline(trial, folder, budget, t0)
            else:
                values = self._search(trial, folder, budget, t0)
            self._check_still_ours(trial)
            return values
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as exc:
            # The trial fails with its reason on record and the study goes on.
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            if isinstance(exc, OSError):
                # The machine's failure (a full disk, a lost mount), not the method's: not
                # counted as done, re-queued on --resume (see autodim.study.storage).
                with contextlib.suppress(Exception):
                    trial.set_user_attr("requeue", True)
            trial.set_user_attr("fail_reason", reason)
            trial.set_user_attr("wall_seconds", time.perf_counter() - t0)
            raise
        finally:
            beat.__exit__(None, None, None)

    @staticmethod
    def _check_still_ours(trial) -> None:
        """Raise when a resumer failed this trial meanwhile (it judged this worker stopped):
        Optuna's tell then fails cleanly and the study loop says so and goes on."""
        from optuna.trial import TrialState

        state = trial.study._storage.get_trial(trial._trial_id).state  # noqa: SLF001
        if state != TrialState.RUNNING:
            raise AutodimError(f"trial {trial.number} was taken over by another worker")

    # -- the two kinds of trial -----------------------------------------------------------
    def _search(self, trial, folder: Path, budget: int, t0: float) -> list[float]:
        import optuna

        from autodim.searchers import Stopwatch, create_searcher, get_searcher

        cfg, space = self.config, self.config.search_space
        self._distill_weight, self._warm_backbone = 0.0, False
        method = trial.suggest_categorical("method", cfg.methods)
        trial.set_user_attr("method", method)
        mspace = space.methods.get(method)
        settings = {k: spec.suggest(trial, f"{method}.{k}")
                    for k, spec in (mspace.params.items() if mspace else [])}
        trial.set_user_attr("settings", _jsonable(settings))
        dims = cfg.candidate_dims(method)
        cls = get_searcher(method)
        inflate, ratio = 1.0, None
        # A searcher whose plans hold masks searches at the budget itself: the compaction
        # step keeps masked fields as they are and could not bring an inflated plan back.
        if space.memcom.enabled and cls.inflatable:
            inflate = float(space.memcom.inflate.suggest(trial, "memcom.inflate"))
            if inflate > 1.0:
                ratio = float(space.memcom.ratio.suggest(trial, "memcom.ratio"))
        same = self._same_params(trial)
        if same is not None:
            return self._copy(trial, same, t0)
        full = full_bytes(self.data.schema, cfg.D)
        search_budget = min(full, int(budget * inflate))
        if space.compress.enabled:
            # The searchers plan in float32; below their smallest float32 plan they search
            # at that size and the compressor (bits, hashing) brings the plan to the budget.
            search_budget = min(full, max(search_budget,
                                          min_feasible_bytes(self.data.schema, cfg.D, dims)))
        task = self._task(cfg.search_train, budget=search_budget, dims=dims)
        searcher = create_searcher(method, **settings)
        with Stopwatch() as sw:
            result = searcher.search(task)
        trial.set_user_attr("search_seconds", sw.seconds)
        plan, info = result.plan, {"memcom": {}, "lowered": {}}
        if ratio is not None or space.compress.enabled:
            try:
                plan, info = (self._compress(trial, result.plan, budget, ratio, dims)
                              if space.compress.enabled else
                              compact_plan(result.plan, self.data.schema, budget, ratio=ratio,
                                           min_rows=space.memcom.min_rows,
                                           candidate_dims=dims))
            except BudgetError as exc:
                # Not a failure of the method: this inflate/ratio cannot work for its plan.
                # Pruned with the violation on record, so the sampler learns to avoid it.
                trial.set_user_attr("prune_reason", {"reason": str(exc), "budget": True})
                trial.set_user_attr("wall_seconds", time.perf_counter() - t0)
                trial.set_constraint("bytes_over_budget",
                                     float(result.plan.num_bytes() - budget))
                raise optuna.TrialPruned(str(exc)) from None
        trial.set_user_attr("memcom", {"inflate": inflate, "ratio": ratio,
                                       "fields": info["memcom"], "lowered": info["lowered"]})
        if not cls.retrain and plan is result.plan:
            return self._record_unretrained(trial, folder, plan, result.history,
                                            searcher.model_, budget, t0)
        warm = result.warm_start if plan is result.plan else None
        self._warm_backbone = space.compress.enabled and space.compress.warm_start
        if self._warm_backbone:
            from autodim.compress import warm_start_embedding

            warm = warm_start_embedding(plan, self._reference(), self.data.schema).state_dict()
        return self._train_and_record(trial, folder, plan, result.history, budget, t0,
                                      warm_start=warm)

    def _baseline(self, trial, folder: Path, budget: int, t0: float) -> list[float]:
        from autodim.baselines import baseline_plan
        from autodim.searchers import Stopwatch, create_searcher

        cfg = self.config
        name = trial.suggest_categorical("baseline", _baseline_choices(trial.study))
        trial.set_user_attr("method", f"baseline:{name}")
        if name == "magprune":
            # magprune trains its full model like a retrain, on the search's batches.
            task = self._task(cfg.train, budget=budget, dims=(cfg.D,),
                              batch_size=cfg.search_train.batch_size)
            searcher = create_searcher("magprune")
            with Stopwatch() as sw:
                result = searcher.search(task)
            trial.set_user_attr("search_seconds", sw.seconds)
            return self._record_unretrained(trial, folder, result.plan, result.history,
                                            searcher.model_, budget, t0)
        plan = baseline_plan(name, self.data.schema, cfg.D, budget)
        return self._train_and_record(trial, folder, plan, {}, budget, t0, prune=False)

    # -- the compressor and its full-D model ----------------------------------------------
    def _compress(self, trial, plan: DimensionPlan, budget: int, ratio: float | None,
                  dims: Sequence[int]):
        """dims x bits x MEmCom per field under the budget (:func:`autodim.compress.
        compress_plan`), with the search space's sampled knobs."""
        from autodim.compress import ProxyLoss, compress_plan

        cs = self.config.search_space.compress
        bits = cs.parse_bits("compress.bits", cs.bits.suggest(trial, "compress.bits"))
        train = cs.train.suggest(trial, "compress.train")
        scale = cs.scale.suggest(trial, "compress.scale")
        self._distill_weight = float(cs.distill.suggest(trial, "compress.distill"))
        if cs.estimator == "model":
            estimator = self._model_loss()
        else:
            estimator = ProxyLoss(self.data.schema, self.config.D)
        out, info = compress_plan(plan, self.data.schema, budget, bits=bits, dims=dims,
                                  ratios=(ratio,) if ratio else (), scale=scale, train=train,
                                  scalars=cs.scalars,
                                  min_rows=self.config.search_space.memcom.min_rows,
                                  estimator=estimator)
        trial.set_user_attr("compress", _jsonable({"bits": bits, "train": train, "scale": scale,
                                                   "estimator": info["estimator"],
                                                   "estimate_on": (cs.estimate_on
                                                                   if cs.estimator == "model"
                                                                   else None),
                                                   "dropped": info["dropped"],
                                                   "refits": getattr(estimator, "refits",
                                                                     None),
                                                   "distill": self._distill_weight,
                                                   "fields": info["fields"]}))
        return out, info

    def _model_loss(self):
        """The compressor's :class:`~autodim.compress.ModelLoss` on the full-``D`` model (its
        field test and refits included), built once per study process: the knobs it depends
        on are fixed keys, and its measured option losses are kept for later trials."""
        from autodim.compress import ModelLoss

        if getattr(self, "_model_loss_cache", None) is None:
            cs = self.config.search_space.compress
            self._model_loss_cache = ModelLoss.from_datamodule(
                self._teacher(), self._datamodule(self.config.train.batch_size),
                self.data.schema, self.config.D, on=cs.estimate_on,
                drop_test=None if cs.drop_fields == "none" else cs.drop_fields,
                refit=self._teacher if cs.refit else None)
        return self._model_loss_cache

    def _reference(self):
        """The model distillation and the warm start read: the one the compressor's model
        estimator measured on (the refit reference when the field test flagged fields),
        else the full-``D`` model."""
        estimator = getattr(self, "_model_loss_cache", None)
        return self._teacher() if estimator is None else estimator.model

    def _teacher(self, drop: frozenset[str] = frozenset()):
        """The full-``D`` model (with ``drop``: with those fields left out, the compressor's
        refit reference), trained once per study and cached in the study folder."""
        cache = self.__dict__.setdefault("_teachers", {})
        if drop in cache:
            return cache[drop]
        import hashlib

        from autodim.export import load_model, save_weights
        from autodim.task import train_plan

        cfg = self.config
        path = self.folder / "teacher" / "weights.safetensors"
        plan = DimensionPlan.full(self.data.schema, cfg.D, drop=drop)
        if drop:
            key = hashlib.sha1(",".join(sorted(drop)).encode()).hexdigest()[:12]
            path = self.folder / "teacher" / f"without-{key}" / "weights.safetensors"
        if path.is_file():
            model = load_model(plan, path, backbone=cfg.backbone,
                               backbone_kwargs=dict(cfg.backbone_kwargs))
        else:
            model = train_plan(plan, self._datamodule(cfg.train.batch_size),
                               backbone=cfg.backbone, backbone_kwargs=dict(cfg.backbone_kwargs),
                               config=cfg.train.config(cfg.seed), test=False).task
            path.parent.mkdir(parents=True, exist_ok=True)
            save_weights(model, path, plan=plan, backbone=cfg.backbone,
                         backbone_kwargs=cfg.backbone_kwargs)
        cache[drop] = model.eval()
        return cache[drop]

    # -- duplicates -------------------------------------------------------------------------
    def _skip_if_enqueued_twice(self, trial) -> None:
        """Workers started together each enqueue the baselines they do not see yet; the
        second copy of a baseline (same name and budget, a later number, the first not
        failed) is pruned, not trained again."""
        import optuna
        from optuna.trial import TrialState

        key = (trial.user_attrs.get("baseline"), trial.user_attrs.get("budget"))
        for t in trial.study.get_trials(deepcopy=False, states=(
                TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)):
            if (t.number < trial.number and t.user_attrs.get("kind") == "baseline"
                    and (t.user_attrs.get("baseline"), t.user_attrs.get("budget")) == key):
                reason = (f"baseline {key[0]} at {key[1]} is already trial {t.number} "
                          "(enqueued by another worker)")
                trial.set_user_attr("duplicate_of", t.number)
                trial.set_user_attr("prune_reason", {"reason": reason})
                trial.set_constraint("bytes_over_budget", 0.0)
                raise optuna.TrialPruned(reason)

    def _skip_if_surplus(self, trial) -> None:
        """Workers decide to start a trial from counts they read a moment earlier, so two of
        them can both start the last one (measured: 7 search trials for a target of 6 with
        three PostgreSQL workers). Trial numbers are handed out atomically by the storage:
        a search trial whose earlier-numbered search trials already make the target is
        surplus. It is pruned as kind ``surplus``, which nothing counts, before it samples
        or trains anything."""
        import optuna

        target = self.config.n_trials
        ahead = sum(search_trials_counted(trial.study.get_trials(deepcopy=False),
                                          before=trial.number))
        if ahead >= target:
            reason = (f"the study's {target} search trial(s) are already done or running "
                      "(another worker started this one at the same moment)")
            trial.set_user_attr("kind", "surplus")
            trial.set_user_attr("prune_reason", {"reason": reason})
            trial.set_constraint("bytes_over_budget", 0.0)
            raise optuna.TrialPruned(reason)

    def _same_params(self, trial):
        """A complete trial with exactly these parameters, if any. Searches and retrains are
        seeded, so it would be repeated result for result: TPE does resample a point when a
        method's space is small (a few categorical settings)."""
        from optuna.trial import TrialState

        params = trial.params
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if (t.number != trial.number and t.params == params
                    and t.user_attrs.get("kind") == "search"):
                return t
        return None

    def _copy(self, trial, same, t0: float) -> list[float]:
        skip = {"host", "pid", "wall_seconds", "kind", "budget", "budget_bytes", "method",
                "settings", "retry_of", "retries"}
        for key, value in same.user_attrs.items():
            if key not in skip:
                trial.set_user_attr(key, value)
        trial.set_user_attr("duplicate_of", same.number)
        trial.set_user_attr("wall_seconds", time.perf_counter() - t0)
        trial.set_constraint("bytes_over_budget", same.constraints["bytes_over_budget"])
        return list(same.values)

    # -- training and recording -------------------------------------------------------------
    def _datamodule(self, batch_size: int) -> CTRDataModule:
        # A fresh data module per run: its loaders count epochs, and a shared one would make
        # a trial's shuffling depend on the trials before it.
        return CTRDataModule(self.data, batch_size=batch_size, seed=self.config.seed)

    def _task(self, settings: TrainSettings, *, budget: int, dims: Sequence[int],
              batch_size: int | None = None):
        """The :class:`~autodim.searchers.SearchTask` of a search or a retrain: the study's
        model, trained with ``settings`` on batches of ``batch_size`` (default
        ``settings.batch_size``), the one batch size both the data module and the task's
        train config carry."""
        from autodim.searchers import SearchTask

        cfg = self.config
        batch_size = settings.batch_size if batch_size is None else batch_size
        return SearchTask(data=self._datamodule(batch_size), D=cfg.D, budget_bytes=budget,
                          candidate_dims=tuple(dims), backbone=cfg.backbone,
                          backbone_kwargs=dict(cfg.backbone_kwargs),
                          train=replace(settings.config(cfg.seed), batch_size=batch_size),
                          seed=cfg.seed)

    def _train_and_record(self, trial, folder: Path, plan: DimensionPlan,
                          history: dict[str, Any], budget: int, t0: float, *,
                          warm_start: dict | None = None, prune: bool = True) -> list[float]:
        import optuna

        from autodim.searchers.base import retrain_plan

        cfg = self.config
        nbytes = plan.num_bytes()
        pruner = PruneHopeless(self.references() if (prune and cfg.pruning.enabled) else [],
                               nbytes, max_epochs=cfg.train.epochs,
                               after_epochs=cfg.pruning.after_epochs,
                               margin=cfg.pruning.margin)
        callbacks: list[Callback] = [pruner]
        if prune and getattr(self, "_warm_backbone", False):
            callbacks.append(_CopyBackbone(self._reference()))
        if prune and getattr(self, "_distill_weight", 0.0) > 0:
            from autodim.task import Distill

            callbacks.append(Distill(self._reference(), weight=self._distill_weight,
                                     temperature=cfg.search_space.compress.temperature))
        # The study's model with its ``train:`` settings; retrain_plan is what autodim.api.retrain
        # wraps (the API sits above this layer).
        trained = retrain_plan(plan, self._datamodule(cfg.train.batch_size),
                               cfg.train.config(cfg.seed), backbone=cfg.backbone,
                               backbone_kwargs=cfg.backbone_kwargs, warm_start=warm_start,
                               callbacks=callbacks)
        metrics = dict(trained.metrics)
        trial.set_user_attr("curve", pruner.curve)
        if pruner.pruned is not None:
            self._set_common(trial, folder, plan, history, budget, t0, metrics)
            trial.set_user_attr("prune_reason", pruner.pruned)
            raise optuna.TrialPruned(
                f"val AUC {pruner.pruned['val_auc']:.4f} after {pruner.pruned['epoch']} "
                f"epoch(s), at most {pruner.pruned['bound']:.4f} at its pace: more than "
                f"{cfg.pruning.margin} below trial {pruner.pruned['reference_trial']} "
                f"({pruner.pruned['reference_val_auc']:.4f}) with no more bytes")
        return self._finish(trial, folder, plan, history, budget, t0, metrics, trained.task)

    def _record_unretrained(self, trial, folder: Path, plan: DimensionPlan,
                            history: dict[str, Any], model, budget: int, t0: float
                            ) -> list[float]:
        metrics = dict(history.get("eval") or {})
        if "val_auc" not in metrics:
            raise AutodimError(f"{plan.searcher.get('name')}: a searcher that does not "
                               "retrain must report history['eval']['val_auc']")
        metrics.setdefault("epochs", 0)
        trial.set_user_attr("retrained", False)
        return self._finish(trial, folder, plan, history, budget, t0, metrics, model)

    def _set_common(self, trial, folder: Path, plan: DimensionPlan, history: dict[str, Any],
                    budget: int, t0: float, metrics: dict[str, float]) -> None:
        nbytes = plan.num_bytes()
        keep = {k: float(v) for k, v in metrics.items()
                if k in ("val_auc", "val_logloss", "test_auc", "test_logloss")
                and v is not None and math.isfinite(float(v))}
        plan = plan.replace(metrics={**plan.metrics, **keep}, budget_bytes=budget)
        plan.save(folder / "plan.json")
        if history:
            atomic_write_json(folder / "history.json", _jsonable(history))
            trial.set_user_attr("history_file", str((folder / "history.json").relative_to(
                self.folder)))
        text = plan.to_json()
        trial.set_user_attr("plan", json.loads(text) if len(text) <= PLAN_ATTR_LIMIT else None)
        trial.set_user_attr("plan_file", str((folder / "plan.json").relative_to(self.folder)))
        trial.set_user_attr("dims", plan.dims)
        for key in ("val_auc", "val_logloss", "test_auc", "test_logloss"):
            if key in keep:
                trial.set_user_attr(key, keep[key])
        trial.set_user_attr("bytes", nbytes)
        trial.set_user_attr("compression", plan.compression())
        trial.set_user_attr("feasible", nbytes <= budget)
        trial.set_user_attr("epochs", int(metrics.get("epochs", 0)))
        trial.set_user_attr("train_seconds", float(metrics.get("train_seconds", 0.0)))
        trial.set_user_attr("wall_seconds", time.perf_counter() - t0)
        trial.set_constraint("bytes_over_budget", float(nbytes - budget))

    def _finish(self, trial, folder: Path, plan: DimensionPlan, history: dict[str, Any],
                budget: int, t0: float, metrics: dict[str, float], model) -> list[float]:
        for key in ("val_auc",):
            v = metrics.get(key)
            if v is None or not math.isfinite(float(v)):
                raise TrainingDiverged(f"validation AUC is {v} (training diverged)")
        if model is not None:
            from autodim.export import save_weights

            save_weights(model, folder / "weights.safetensors", plan=plan,
                         backbone=self.config.backbone,
                         backbone_kwargs=self.config.backbone_kwargs)
            trial.set_user_attr("weights_file", str((folder / "weights.safetensors").relative_to(
                self.folder)))
        self._set_common(trial, folder, plan, history, budget, t0, metrics)
        values = {"val_auc": float(metrics["val_auc"]),
                  "val_logloss": float(metrics.get("val_logloss", math.nan)),
                  "bytes": float(plan.num_bytes())}
        out = [values[o] for o in self.config.objectives]
        if not all(math.isfinite(v) for v in out):
            raise TrainingDiverged(f"objective values {out} are not finite")
        return out


class _CopyBackbone(Callback):
    """A compressed plan warm-started from the full model starts from its backbone too."""

    def __init__(self, teacher) -> None:
        self.teacher = teacher

    def on_fit_start(self, trainer, pl_module) -> None:
        pl_module.backbone.load_state_dict(self.teacher.backbone.state_dict())


def _jsonable(obj: Any) -> Any:
    """JSON-safe copy of a searcher's history/settings (tensors and arrays become lists)."""
    import numpy as np
    import torch

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, DimensionPlan):
        return obj.to_dict()
    return repr(obj)


def _baseline_choices(study) -> list[str]:
    """The choices of the ``baseline`` parameter: those the study already uses if it has
    baseline trials (Optuna refuses a changed distribution, so a study made before a baseline
    was added still resumes), else every known baseline."""
    for t in study.get_trials(deepcopy=False):
        dist = t.distributions.get("baseline")
        if dist is not None:
            return list(dist.choices)
    return list(BASELINE_NAMES)

