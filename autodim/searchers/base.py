"""The searcher contract: one abstract method, ``search(task) -> SearchResult``."""

from __future__ import annotations

import abc
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

from torch import nn

from autodim.budget import fit_dims_to_budget, format_bytes, full_bytes, min_feasible_bytes
from autodim.data.datamodule import CTRDataModule
from autodim.data.schema import Schema
from autodim.errors import BudgetError
from autodim.models import create_backbone
from autodim.plan import DimensionPlan
from autodim.task import TrainConfig

__all__ = ["SearchTask", "SearchResult", "Searcher", "retrain", "retrain_plan", "Stopwatch",
           "bytes_only_dims", "check_plan", "BUDGET_USE"]

#: Share of the budget a searcher's plan is expected to use (unless its history says why
#: less is better).
BUDGET_USE = 0.95


@dataclass
class SearchTask:
    """Everything a searcher needs.

    Attributes:
        data: The datamodule (train batches fit weights, validation batches guide the search).
        D: Common output dim of the embedding layer (the full model's dim).
        budget_bytes: Byte budget of the plan's embedding (``None``: no budget).
        candidate_dims: Dims a field may get (sorted ascending; 0 drops the field, so any
            budget is feasible and a field the model does not need costs nothing).
        backbone, backbone_kwargs: The model on top of the embeddings (see
            :func:`autodim.models.create_backbone`).
        train: Trainer settings for the search's own training (epochs, lr, batch size...).
        seed: Seed of the search.
    """

    data: CTRDataModule
    D: int = 16
    budget_bytes: int | None = None
    candidate_dims: tuple[int, ...] = (0, 1, 2, 4, 8, 16)
    backbone: str = "fm"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        self.candidate_dims = tuple(sorted(set(int(d) for d in self.candidate_dims)))
        dims = self.candidate_dims
        if not dims or dims[0] < 0 or dims[-1] > self.D:
            raise BudgetError(f"candidate dims {self.candidate_dims} must lie in [0, D={self.D}]")

    @property
    def schema(self) -> Schema:
        return self.data.schema

    def make_backbone(self) -> nn.Module:
        return create_backbone(self.backbone, self.schema.num_fields, self.D,
                               **self.backbone_kwargs)

    def full_bytes(self) -> int:
        return full_bytes(self.schema, self.D)

    def check_budget(self, align: str = "project") -> None:
        """Raise :class:`BudgetError` naming the minimum if no candidate plan fits."""
        if self.budget_bytes is None:
            return
        minimum = min_feasible_bytes(self.schema, self.D, self.candidate_dims, align)
        if self.budget_bytes < minimum:
            raise BudgetError(budget_hint(self.budget_bytes, minimum, self.candidate_dims))


@dataclass
class SearchResult:
    """A searcher's output.

    Attributes:
        plan: The dimension plan (fits ``task.budget_bytes``).
        history: JSON-able traces for the plots (α trajectories, sparsity, saliency,
            generations...), plus ``search_seconds``.
        warm_start: Optional state dict of an embedding built from ``plan`` (a retrain may
            start from it).
    """

    plan: DimensionPlan
    history: dict[str, Any] = field(default_factory=dict)
    warm_start: dict[str, Any] | None = None


class Searcher(abc.ABC):
    """Base class of every dimension searcher.

    Subclasses store their keyword-only settings in ``__init__`` (nothing else happens
    there) and implement :meth:`search`. The lifecycle is: ``search(task)`` trains what it
    needs on ``task.data``, decides per-field dims (or masks) that fit
    ``task.budget_bytes``, and returns a :class:`SearchResult` whose plan carries this
    searcher's name and settings. Register a subclass with
    :func:`autodim.searchers.register_searcher` to make it available by name.

    Class attributes:
        name: Registry name.
        history_keys: Keys ``search`` guarantees in ``SearchResult.history``.
        quick_settings: Settings that make the search finish in seconds on tiny data (used
            by the conformance suite and ``--quick`` benchmarks).
        retrain: ``True`` (default): the plan is meant to be retrained and its quality is
            that of the retrained model. ``False``: the search itself measures the plan's
            model (``history["eval"]``, the model in :attr:`model_`); orchestration code
            uses those metrics instead of retraining, and ``method: all`` leaves it out.
        accepts_pretrained: ``search(task, pretrained=...)`` takes a trained full-``D``
            model (or its :class:`~autodim.task.TrainResult`) instead of training one.
        baseline: The searcher is a rule, not a search: its plan may follow bytes alone
            (the "plans come from what was learned" checks do not apply to it).
        inflatable: ``True`` (default): a study may let it search under ``inflate x
            budget`` and bring the plan back with MEmCom / the compressor. ``False``: its
            plans may hold element or row masks, which the compressor keeps as they are,
            so an inflated plan could not be brought back: a study searches it at the
            budget itself.

    Attributes (after :meth:`search`):
        model_: The trained model whose quality the plan carries, when the search produces
            one (searchers with ``retrain = False``); ``None`` otherwise.
    """

    name: ClassVar[str] = ""
    history_keys: ClassVar[tuple[str, ...]] = ()
    quick_settings: ClassVar[Mapping[str, Any]] = {}
    retrain: ClassVar[bool] = True
    accepts_pretrained: ClassVar[bool] = False
    baseline: ClassVar[bool] = False
    inflatable: ClassVar[bool] = True
    model_: Any = None  # the hand-off: set by searchers whose search trains the final model

    def get_settings(self) -> dict[str, Any]:
        """The constructor arguments, read back from attributes of the same name."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters
                if p != "self" and sig.parameters[p].kind != inspect.Parameter.VAR_KEYWORD}

    @abc.abstractmethod
    def search(self, task: SearchTask) -> SearchResult:
        """Search a plan for ``task``; must respect ``task.budget_bytes`` and ``task.seed``.

        Searchers with ``accepts_pretrained = True`` also take ``pretrained=`` (keyword).
        """

    def run(self, task: SearchTask, pretrained: Any = None) -> SearchResult:
        """``search(task)``, handing ``pretrained`` over where the searcher accepts one."""
        if pretrained is not None and self.accepts_pretrained:
            return self.search(task, pretrained=pretrained)  # type: ignore[call-arg]
        return self.search(task)

    def make_plan(self, task: SearchTask, dims: Mapping[str, int], **kwargs: Any
                  ) -> DimensionPlan:
        """A plan from per-field dims, stamped with this searcher's provenance."""
        return DimensionPlan.from_dims(
            task.schema, task.D, dict(dims),
            searcher={"name": self.name, "settings": _jsonable(self.get_settings())},
            seed=task.seed, budget_bytes=task.budget_bytes, **kwargs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_settings().items())
        return f"{type(self).__name__}({args})"


def bytes_only_dims(task: SearchTask) -> dict[str, int] | None:
    """The plan bytes alone would give: every candidate equally valued in every field
    (:func:`~autodim.budget.fit_dims_to_budget` with equal scores), so fields shrink where
    that saves the most bytes. ``None`` without a budget or when it is infeasible."""
    if task.budget_bytes is None:
        return None
    cands = list(task.candidate_dims)
    scores = {n: [float(k) for k in range(len(cands))] for n in task.schema.names}
    try:
        return fit_dims_to_budget(task.schema, task.D, cands, scores, task.budget_bytes)
    except BudgetError:
        return None


def check_plan(searcher: Searcher, task: SearchTask, plan: DimensionPlan,
               history: dict[str, Any], *, why_less: str | None = None) -> None:
    """Record in ``history`` how much of the budget ``plan`` uses and whether it is just the
    bytes-only plan (:func:`bytes_only_dims`); both land in ``history["warnings"]`` when
    they fail (less than :data:`BUDGET_USE` of the budget without ``why_less``, a measured
    reason; a plan equal to the bytes-only one from a searcher that is not a baseline)."""
    warnings_ = history.setdefault("warnings", [])
    if task.budget_bytes:
        used = plan.num_bytes() / task.budget_bytes
        history["budget_used"] = used
        if why_less is not None:
            history["budget_note"] = why_less
        elif used < BUDGET_USE:
            warnings_.append(f"the plan uses {used:.1%} of the budget "
                             f"(expected >= {BUDGET_USE:.0%})")
    ref = bytes_only_dims(task)
    history["bytes_only_dims"] = ref
    if ref is not None and plan.dims == ref and not searcher.baseline:
        warnings_.append("the plan equals the bytes-only plan (every candidate valued alike): "
                         "what the search learned did not change the allocation")


def budget_hint(budget: int, minimum: int, candidate_dims: Sequence[int]) -> str:
    """The budget error: the smallest feasible budget and what would lower it."""
    lowest = min(candidate_dims)
    ways = []
    if 0 not in candidate_dims:
        ways.append("adding 0 to the candidate dims (--dims 0,...) lets fields be dropped "
                    "(the minimum becomes 0 B)")
    ways.append("hashing large fields (a study's memcom step, or the hash/qr baselines) "
                "shrinks their rows")
    return (f"budget {budget} B ({format_bytes(budget)}) is below the smallest feasible "
            f"budget {minimum} B ({format_bytes(minimum)}): every field at dim {lowest} of "
            f"candidates {list(candidate_dims)}; raise the budget to at least {minimum} B, or "
            "lower the minimum: " + "; ".join(ways))


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds``."""

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def retrain_plan(plan: DimensionPlan, datamodule: CTRDataModule, config: TrainConfig, *,
                 backbone: str = "fm", backbone_kwargs: Mapping[str, Any] | None = None,
                 warm_start: Mapping[str, Any] | None = None, test: bool = True,
                 callbacks=()):
    """Train a fresh compact model from ``plan``: the one retrain every caller shares
    (:func:`autodim.api.retrain` checks its inputs and calls this; so do :func:`retrain`
    and the study's trials, which sit below the API).

    ``warm_start``: a state dict of the plan's embedding (a searcher's
    ``SearchResult.warm_start``) to start from instead of a fresh initialisation; the
    embedding is built under ``config.seed`` first, so entries the state dict lacks are
    initialised exactly as a cold retrain would initialise them. Returns the
    :class:`~autodim.task.TrainResult`."""
    from autodim.task import seed_everything, train_plan

    embedding = None
    if warm_start is not None:
        seed_everything(config.seed)
        embedding = plan.build(sparse_threshold=config.sparse_threshold)
        embedding.load_state_dict(warm_start, strict=False)
    return train_plan(plan, datamodule, backbone=backbone,
                      backbone_kwargs=dict(backbone_kwargs or {}), config=config,
                      embedding=embedding, test=test, callbacks=callbacks)


def retrain(task: SearchTask, result: SearchResult, *, warm_start: bool = False,
            config: TrainConfig | None = None, test: bool = True, callbacks=()):
    """Retrain ``result.plan`` on ``task``'s data and model (optionally starting from the
    searcher's ``warm_start`` weights); :func:`retrain_plan` with the task's settings.
    ``callbacks`` are extra Lightning callbacks for the training run."""
    return retrain_plan(result.plan, task.data, config or task.train, backbone=task.backbone,
                        backbone_kwargs=task.backbone_kwargs,
                        warm_start=result.warm_start if warm_start else None, test=test,
                        callbacks=callbacks)
