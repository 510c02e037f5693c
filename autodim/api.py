"""The Python API, mirroring the command line (``autodim search``, ``pareto``, ``export``).

Example:
    >>> import autodim
    >>> res = autodim.search("studies/quick.yaml", n_trials=4)     # doctest: +SKIP
    >>> res.front[["trial", "method", "val_auc", "bytes"]]          # doctest: +SKIP
    >>> n = res.best_under("10x")                                   # doctest: +SKIP
    >>> model = res.model(n)          # the compact model, weights loaded  # doctest: +SKIP
    >>> res.export(n, "shipped/")     # plan, safetensors, TorchRec, FuxiCTR  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from autodim.defaults import DEFAULT_LR

__all__ = ["search", "load_study", "search_plan", "retrain"]


def _config(study: Any):
    from autodim.study.config import StudyConfig

    if isinstance(study, StudyConfig):
        return study
    if isinstance(study, Mapping):
        return StudyConfig.from_dict(dict(study), source="<dict>", base_dir=Path.cwd())
    return StudyConfig.load(study)


def search(study: str | os.PathLike | Mapping[str, Any] | Any, *, n_trials: int | None = None,
           storage: str | None = None, resume: bool = False,
           methods: Sequence[str] | None = None, out_dir: str | os.PathLike | None = None,
           data: Any = None, progress: bool | Callable[[str], None] = False,
           threads: int | None = None):
    """Run (or resume) a study; the API form of ``autodim search STUDY.yaml``.

    Args:
        study: A study YAML path, a mapping with the same keys (relative paths resolve
            against the working folder) or a :class:`~autodim.study.config.StudyConfig`.
        n_trials: Search trials the study should hold when done (default: the file's).
        storage: Optuna storage URL (default: a journal file in the study's folder).
        resume: Continue an existing study (finished trials are kept, crashed ones re-queued).
        methods: Restrict the study to these methods.
        out_dir: The study's folder (default ``<output>/<name>`` beside the study file).
        data: An already loaded dataset to use instead of the file's ``dataset``.
        progress: ``True`` prints one line per trial; a callable receives the lines.
        threads: torch CPU threads while the study runs (default: the study's, 1).

    Returns:
        A :class:`~autodim.study.result.StudyResult`.

    Example:
        >>> res = search({"dataset": "synthetic:tiny", "methods": "blackbox", "D": 8,
        ...               "budget": "6x", "n_trials": 2, "baselines": ["uniform"],
        ...               "train": {"epochs": 1}, "output": "/tmp/autodim-doc"})  # doctest: +SKIP
        >>> len(res.trials_dataframe())  # doctest: +SKIP
        3
    """
    from autodim.study.runner import run_study

    echo = progress if callable(progress) else (print if progress else None)
    return run_study(_config(study), n_trials=n_trials, storage=storage, resume=resume,
                     methods=list(methods) if methods else None, out_dir=out_dir, data=data,
                     echo=echo, threads=threads)


def load_study(path: str | os.PathLike, *, storage: str | None = None):
    """Open a study from its YAML file or its folder (see
    :func:`autodim.study.result.load_study`)."""
    from autodim.study.result import load_study as _load

    return _load(path, storage=storage)


def search_plan(method: str, data: Any = "synthetic", *, budget: str | int = "10x", D: int = 16,
                candidate_dims: Sequence[int] = (0, 1, 2, 4, 8, 16), backbone: str = "fm",
                settings: Mapping[str, Any] | None = None, epochs: int = 2,
                batch_size: int = 1024, lr: float = DEFAULT_LR, seed: int = 0,
                retrain: bool = False, retrain_epochs: int = 10, quick: bool = False,
                train_options: Mapping[str, Any] | None = None):
    """Run one searcher once; the API form of ``autodim search --method NAME --data ...``.

    Args:
        method: A registered searcher (:func:`autodim.searchers.list_searchers`).
        data: A source for :func:`autodim.data.load_data` or a loaded ``CTRData``.
        budget: ``"10x"``, ``"2MB"`` or bytes.
        settings: The searcher's settings (on top of its ``quick_settings`` with ``quick``).
        retrain: Also retrain the compact model (``retrain_epochs``, early stopping) and put
            its metrics into the plan.
        train_options: Further :class:`~autodim.task.TrainConfig` fields (e.g. accelerator,
            devices, strategy) for the search's and the retrain's training.

    Returns:
        ``(plan, search_result)``.

    Example:
        >>> plan, _ = search_plan("blackbox", "synthetic:tiny", D=8, budget="6x",
        ...                       settings={"n_candidates": 3})  # doctest: +SKIP
        >>> plan.num_bytes() <= plan.budget_bytes  # doctest: +SKIP
        True
    """
    from dataclasses import replace

    from autodim.budget import full_bytes, parse_budget
    from autodim.data import load_data
    from autodim.data.datamodule import CTRDataModule
    from autodim.searchers import SearchTask, create_searcher, get_searcher
    from autodim.task import TrainConfig

    cls = get_searcher(method)  # an unknown method fails before any data is loaded
    ds = load_data(data) if isinstance(data, (str, os.PathLike)) else data
    cfg = TrainConfig(max_epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, patience=1,
                      **dict(train_options or {}))
    task = SearchTask(data=CTRDataModule(ds, batch_size=batch_size, seed=seed), D=D,
                      budget_bytes=parse_budget(budget, full_bytes(ds.schema, D)),
                      candidate_dims=tuple(candidate_dims), backbone=backbone, train=cfg,
                      seed=seed)
    settings = {**(dict(cls.quick_settings) if quick else {}), **dict(settings or {})}
    result = create_searcher(method, **settings).search(task)
    plan = result.plan
    if retrain:
        if cls.retrain:
            m = _retrain(plan, task.data, replace(cfg, max_epochs=retrain_epochs, patience=2),
                         backbone=backbone, warm_start=result.warm_start).metrics
        else:
            m = dict(result.history.get("eval") or {})
        plan = plan.replace(metrics={**plan.metrics, **{
            k: float(m[k]) for k in ("val_auc", "val_logloss", "test_auc", "test_logloss")
            if k in m}})
    return plan, result


def _train_config(settings: Any, seed: int | None):
    """``settings`` as a :class:`~autodim.task.TrainConfig` (``seed`` overriding its own)."""
    from dataclasses import replace

    from autodim.errors import ConfigError
    from autodim.study._validate import _int
    from autodim.study.config import TrainSettings
    from autodim.task import TrainConfig

    if settings is None:
        cfg = TrainConfig()
    elif isinstance(settings, TrainConfig):
        cfg = settings
    elif isinstance(settings, TrainSettings):
        cfg = settings.config(0)
    elif isinstance(settings, Mapping):
        raw = dict(settings)
        own = _int("settings.seed", raw.pop("seed")) if "seed" in raw else 0
        cfg = TrainSettings.parse("settings", raw, TrainSettings()).config(own)
    else:
        raise ConfigError(f"settings: expected a TrainConfig, TrainSettings or a mapping of "
                          f"training settings (epochs, lr, batch_size, ...), got "
                          f"{type(settings).__name__} {settings!r}")
    return cfg if seed is None else replace(cfg, seed=int(seed))


def retrain(plan: Any, data: Any = "synthetic", settings: Any = None, *, backbone: str = "fm",
            backbone_kwargs: Mapping[str, Any] | None = None, seed: int | None = None,
            warm_start: Mapping[str, Any] | None = None, teacher: Any = None,
            distill_weight: float = 1.0, temperature: float = 1.0, test: bool = True,
            callbacks: Sequence[Any] = ()):
    """Train the compact model of ``plan`` from scratch: THE way to retrain a plan (the
    CLI's ``autodim train``, :func:`search_plan`'s ``retrain=True`` and the benchmarks call
    it; :func:`autodim.searchers.retrain` and the study's trials call
    :func:`autodim.searchers.base.retrain_plan`, the function it wraps).

    Args:
        plan: A :class:`~autodim.plan.DimensionPlan` or the path of a plan JSON.
        data: A ``CTRDataModule`` (used as it is, its batch size included), a loaded
            ``CTRData`` or a source for :func:`autodim.data.load_data`.
        settings: The training settings: a :class:`~autodim.task.TrainConfig`, a study's
            :class:`~autodim.study.config.TrainSettings`, or a mapping with the study
            file's ``train:`` keys (``epochs``, ``batch_size``, ``lr``, ``patience``,
            ``weight_decay``, ``limit_train_batches``, ``accelerator``, ``devices``,
            ``strategy``) and ``seed``. Default: ``TrainConfig()``.
        backbone, backbone_kwargs: The model on the embeddings
            (:func:`autodim.models.create_backbone`).
        seed: Seeds initialisation and shuffling (overrides the settings' seed).
        warm_start: A state dict of the plan's embedding to start from (a searcher's
            ``SearchResult.warm_start``).
        teacher: A trained model (an ``nn.Module`` mapping ids to logits, or a
            :class:`~autodim.task.TrainResult`) to distil from
            (:class:`~autodim.task.Distill` with ``distill_weight`` and ``temperature``).
        test: Also evaluate on the test split.
        callbacks: Extra Lightning callbacks.

    Returns:
        The :class:`~autodim.task.TrainResult` (``.task`` the trained model, ``.metrics``).

    Example:
        >>> from autodim.plan import DimensionPlan
        >>> from autodim.data import load_data
        >>> data = load_data("synthetic:tiny", rows=3000)                # doctest: +SKIP
        >>> res = retrain(DimensionPlan.full(data.schema, 8), data, {"epochs": 1},
        ...               seed=0)                                         # doctest: +SKIP
        >>> 0.5 < res.metrics["test_auc"] <= 1                            # doctest: +SKIP
        True
    """
    from dataclasses import replace

    from torch import nn

    from autodim.data import CTRData, load_data
    from autodim.data.datamodule import CTRDataModule
    from autodim.errors import ConfigError
    from autodim.plan import DimensionPlan
    from autodim.searchers.base import retrain_plan
    from autodim.task import Distill, TrainResult

    if isinstance(plan, (str, os.PathLike)):
        plan = DimensionPlan.load(plan)
    elif not isinstance(plan, DimensionPlan):
        raise ConfigError(f"plan: expected a DimensionPlan or a plan JSON path, got "
                          f"{type(plan).__name__} {plan!r}")
    cfg = _train_config(settings, seed)
    if isinstance(data, CTRDataModule):
        dm = data
        cfg = replace(cfg, batch_size=dm.batch_size)  # one batch size: the one it trains on
    elif isinstance(data, (CTRData, str, os.PathLike)):
        ds = load_data(data) if isinstance(data, (str, os.PathLike)) else data
        dm = CTRDataModule(ds, batch_size=cfg.batch_size, seed=cfg.seed)
    else:
        raise ConfigError(f"data: expected a CTRDataModule, CTRData or a data source, got "
                          f"{type(data).__name__} {data!r}")
    extra = list(callbacks)
    if teacher is not None:
        model = teacher.task if isinstance(teacher, TrainResult) else teacher
        if not isinstance(model, nn.Module):
            raise ConfigError(f"teacher: expected a trained model (nn.Module or TrainResult), "
                              f"got {type(teacher).__name__} {teacher!r}")
        extra.append(Distill(model, weight=distill_weight, temperature=temperature))
    return retrain_plan(plan, dm, cfg, backbone=backbone, backbone_kwargs=backbone_kwargs,
                        warm_start=warm_start, test=test, callbacks=extra)


_retrain = retrain  # for search_plan, whose ``retrain`` argument hides the function
