"""Study files (``studies/*.yaml``): :class:`StudyConfig` and its settings.

A study file is parsed into plain dataclasses and validated before any data is loaded or any
model is trained, so a typo costs a second, not a study. Every error names the file and the
key at fault (``studies/quick.yaml: sampler.name: unknown sampler 'tpee' (did you mean
'tpe'?)``). The formats are documented in the README (section "Studies"). Search-space files
are parsed in :mod:`autodim.study.space` (its names are importable from here too), the
shared checks live in :mod:`autodim.study._validate`.

Example:
    >>> from autodim.study.config import StudyConfig
    >>> cfg = StudyConfig.from_dict({"dataset": "synthetic:tiny", "methods": "blackbox",
    ...                              "budget": "10x", "n_trials": 2})
    >>> cfg.name, cfg.methods, cfg.budgets
    ('study', ['blackbox'], ['10x'])
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from autodim.defaults import DEFAULT_LR
from autodim.errors import ConfigError
from autodim.study._validate import (
    _bool,
    _check_keys,
    _float,
    _hint,
    _int,
    _mapping,
    _read_yaml,
    _str,
)

# The search space lives in autodim.study.space; its names stay importable from here.
from autodim.study.space import (
    COMPRESS_KEYS,  # noqa: F401 (re-exported)
    DEFAULT_CANDIDATE_DIMS,
    MEMCOM_KEYS,  # noqa: F401 (re-exported)
    METHOD_KEYS,  # noqa: F401 (re-exported)
    PARAM_KEYS,  # noqa: F401 (re-exported)
    SPACE_KEYS,  # noqa: F401 (re-exported)
    CompressSpace,
    MemcomSpace,
    MethodSpace,
    ParamSpec,
    SearchSpace,
    load_search_space,
)

__all__ = ["ParamSpec", "MethodSpace", "MemcomSpace", "CompressSpace", "SearchSpace",
           "TrainSettings", "PruningSettings", "StudyConfig", "load_study_config",
           "load_search_space", "OBJECTIVES", "SAMPLERS", "SamplerSpec", "BASELINE_NAMES",
           "DEFAULT_CANDIDATE_DIMS"]

#: Objective name -> Optuna direction.
OBJECTIVES: dict[str, str] = {"val_auc": "maximize", "val_logloss": "minimize",
                              "bytes": "minimize"}


@dataclass(frozen=True)
class SamplerSpec:
    """One entry of :data:`SAMPLERS`, read by the study file's validation and by
    :func:`autodim.study.runner.make_sampler` alike.

    Attributes:
        cls: The class name on ``optuna.samplers`` (a string: this module imports no Optuna).
        options: The settings a study file may give besides ``name`` and ``seed``, each
            with its check: ``("int", minimum)``, ``("bool",)`` or ``("float",)``.
        defaults: Constructor arguments used unless the file gives them.
        linked: Constructor arguments that take the value of another one
            (``{"group": "multivariate"}``).
        experimental: Optuna calls some of these constructor arguments experimental; its
            warning about them is noise, so the runner silences it.
    """

    cls: str
    options: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    linked: Mapping[str, str] = field(default_factory=dict)
    experimental: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key a study file's ``sampler`` mapping may hold."""
        return ("name", "seed", *self.options)


#: Sampler name -> how it is validated and built.
SAMPLERS: dict[str, SamplerSpec] = {
    # group=multivariate: methods have different parameters (and baselines none), so the
    # joint TPE model is fitted per group of trials that share a search space.
    "tpe": SamplerSpec("TPESampler",
                       {"n_startup_trials": ("int", 1), "multivariate": ("bool",),
                        "constant_liar": ("bool",)},
                       defaults={"multivariate": True, "constant_liar": True},
                       linked={"group": "multivariate"}, experimental=True),
    "nsga2": SamplerSpec("NSGAIISampler",
                         {"population_size": ("int", 2), "mutation_prob": ("float",),
                          "crossover_prob": ("float",)}),
    "random": SamplerSpec("RandomSampler"),
}

#: Every baseline a study can record. The list is fixed (it is the choice set of the
#: ``baseline`` parameter, which Optuna requires to stay the same across a study).
BASELINE_NAMES: tuple[str, ...] = ("full", "uniform", "mde", "hash", "qr", "memcom", "magprune",
                                   "quant", "mixed-precision")
DEFAULT_BASELINES: tuple[str, ...] = ("uniform", "mde", "hash", "qr", "memcom", "magprune")

STUDY_KEYS = ("name", "dataset", "backbone", "D", "methods", "method", "search_space",
              "budget", "budgets", "objectives", "n_trials", "sampler", "seed", "storage",
              "output", "baselines", "train", "search_train", "pruning", "threads")
TRAIN_KEYS = ("epochs", "batch_size", "lr", "patience", "weight_decay", "limit_train_batches",
              "accelerator", "devices", "strategy")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
PRUNING_KEYS = ("after_epochs", "margin")


# -- study files ------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSettings:
    """Training settings (the retrain of each trial's compact model, or the searcher's own)."""

    epochs: int = 10
    batch_size: int = 1024
    lr: float = DEFAULT_LR
    patience: int = 2
    weight_decay: float = 0.0
    limit_train_batches: int | float = 1.0
    accelerator: str = "cpu"
    devices: int | str | tuple[int, ...] = 1
    strategy: str = "auto"

    @classmethod
    def parse(cls, where: str, raw: Any, default: "TrainSettings") -> "TrainSettings":
        raw = _mapping(where, raw)
        _check_keys(where, raw, TRAIN_KEYS)
        out = default
        if "epochs" in raw:
            out = replace(out, epochs=_int(f"{where}.epochs", raw["epochs"], minimum=1))
        if "batch_size" in raw:
            out = replace(out, batch_size=_int(f"{where}.batch_size", raw["batch_size"],
                                               minimum=1))
        if "lr" in raw:
            lr = _float(f"{where}.lr", raw["lr"])
            if lr <= 0:
                raise ConfigError(f"{where}.lr: must be > 0, got {raw['lr']!r}")
            out = replace(out, lr=lr)
        if "patience" in raw:
            out = replace(out, patience=_int(f"{where}.patience", raw["patience"], minimum=0))
        if "weight_decay" in raw:
            out = replace(out, weight_decay=_float(f"{where}.weight_decay", raw["weight_decay"]))
        if "limit_train_batches" in raw:
            v = raw["limit_train_batches"]
            num = _float(f"{where}.limit_train_batches", v)
            if num <= 0:
                raise ConfigError(f"{where}.limit_train_batches: must be > 0, got {v!r}")
            out = replace(out, limit_train_batches=int(num) if num > 1 else num)
        if "accelerator" in raw:
            acc = _str(f"{where}.accelerator", raw["accelerator"]).lower()
            if acc not in ACCELERATORS:
                raise ConfigError(f"{where}.accelerator: unknown accelerator {acc!r}"
                                  f"{_hint(acc, ACCELERATORS)}; one of {', '.join(ACCELERATORS)}")
            out = replace(out, accelerator=acc)
        if "devices" in raw:
            out = replace(out, devices=parse_devices(f"{where}.devices", raw["devices"]))
        if "strategy" in raw:
            out = replace(out, strategy=_str(f"{where}.strategy", raw["strategy"]))
        return out

    def config(self, seed: int):
        """The :class:`autodim.task.TrainConfig` for these settings."""
        from autodim.task import TrainConfig

        return TrainConfig(max_epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           patience=self.patience, weight_decay=self.weight_decay, seed=seed,
                           limit_train_batches=self.limit_train_batches,
                           accelerator=self.accelerator, strategy=self.strategy,
                           devices=list(self.devices) if isinstance(self.devices, tuple)
                           else self.devices)


def check_one_device(where: str, devices: Any) -> None:
    """A study trains many models in one process: one device each. With more, Lightning's
    DDP would re-run the whole ``autodim search`` per device."""
    if devices == 1 or (isinstance(devices, tuple) and len(devices) == 1):
        return
    raise ConfigError(f"{where}: a study trains on one device per worker, got {devices!r}; "
                      "for several GPUs start one worker per device on the same storage "
                      "(CUDA_VISIBLE_DEVICES=0 autodim search STUDY --resume, then =1, ...); "
                      "multi-device DDP is for `autodim train`")


def parse_devices(where: str, value: Any) -> int | str | tuple[int, ...]:
    """Lightning's ``devices``: a count (``2``), ``"auto"``, ``-1`` (all) or device
    indices (``[0, 1]`` or ``"0,1"``)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a device count, 'auto' or a list of indices, "
                          f"got {value!r}")
    if isinstance(value, int):
        if value == 0 or value < -1:
            raise ConfigError(f"{where}: must be >= 1 (or -1 for all), got {value}")
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if parts and all(p.lstrip("-").isdigit() for p in parts):
            return parse_devices(where, int(parts[0])) if len(parts) == 1 and "," not in text \
                else parse_devices(where, [int(p) for p in parts])
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: expected a device count, 'auto' or a list of indices, got "
                      f"{value!r}")


@dataclass(frozen=True)
class PruningSettings:
    """Stop a retrain that, from epoch ``after_epochs`` on and even continuing at its
    current pace, would stay more than ``margin`` below a finished feasible trial that uses
    no more bytes (it would end up dominated). ``enabled=False`` turns it off."""

    enabled: bool = True
    after_epochs: int = 2
    margin: float = 0.01


@dataclass
class StudyConfig:
    """A validated study file. See the README (section "Studies") for every key.

    Attributes:
        name: Study name (default: the file's stem); names the output folder.
        path: The study file (``None`` for configs built from a dict).
        dataset: ``{"source": ..., **loader options}`` for :func:`autodim.data.load_data`.
        backbone, backbone_kwargs: The model on top of the embeddings.
        D: Common embedding dim (the full model's dim).
        methods: Searchers to run (``"all"`` expands to every registered searcher that
            retrains its plan).
        search_space: Parsed search-space file; ``search_space_path`` where it came from.
        budgets: Budget labels as written (``"10x"``, ``"2MB"``, ``350000``).
        objectives: Names from :data:`OBJECTIVES` (default ``val_auc`` and ``bytes``).
        n_trials: Search trials (baselines come on top).
        sampler: ``{"name": "tpe" | "nsga2" | "random", "seed": ..., ...}``.
        seed: Seed of data splits, searches and training.
        storage: Optuna storage URL (``None``: a journal file in the output folder).
        output: Folder that holds ``<name>/`` with the study's results.
        baselines: Baseline plans recorded in the study.
        train, search_train: Retrain settings and the searchers' own training settings.
        pruning: The rule that stops hopeless retrains.
        threads: torch CPU threads while the study runs (default 1: a study trains many
            small models, where extra intra-op threads cost more than they give, and on a
            busy machine they can make training several times slower).
    """

    name: str = "study"
    path: Path | None = None
    dataset: dict[str, Any] = field(default_factory=lambda: {"source": "synthetic"})
    backbone: str = "fm"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    D: int = 16
    methods: list[str] = field(default_factory=lambda: ["blackbox"])
    search_space: SearchSpace = field(default_factory=SearchSpace)
    search_space_path: Path | None = None
    budgets: list[Any] = field(default_factory=lambda: ["10x"])
    objectives: list[str] = field(default_factory=lambda: ["val_auc", "bytes"])
    n_trials: int = 20
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    seed: int = 0
    storage: str | None = None
    output: Path = Path("_results")
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    train: TrainSettings = field(default_factory=TrainSettings)
    search_train: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=2,
                                                                              patience=1))
    pruning: PruningSettings = field(default_factory=PruningSettings)
    threads: int = 1

    # -- parsing --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "<study>", base_dir: Path | None = None,
                  path: Path | None = None) -> "StudyConfig":
        """Validate a study mapping; relative paths resolve against ``base_dir``.

        Each section has its parser below; they run in this order, so of several errors the
        same one is reported first."""
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        raw = _mapping(source, raw)
        _check_keys(source, raw, STUDY_KEYS)
        cfg = cls(path=path)
        cfg.name = _parse_name(source, raw, path)
        cfg.dataset = _parse_dataset(source, raw, base)
        cfg.backbone, cfg.backbone_kwargs = _parse_backbone(source, raw)
        cfg.D = _int(f"{source}: D", raw.get("D", 16), minimum=1)
        if "method" in raw and "methods" in raw:
            raise ConfigError(f"{source}: give 'methods' or 'method', not both")
        cfg.methods = parse_methods(f"{source}: methods", raw.get("methods", raw.get(
            "method", "blackbox")))
        cfg.search_space_path, cfg.search_space = _parse_search_space(source, raw, base,
                                                                      cfg.methods, cfg.D)
        cfg.budgets = _parse_budgets(source, raw)
        cfg.objectives = _parse_objectives(source, raw)
        cfg.n_trials = _int(f"{source}: n_trials", raw.get("n_trials", 20), minimum=0)
        cfg.seed = _int(f"{source}: seed", raw.get("seed", 0), minimum=0)
        cfg.sampler = _parse_sampler(source, raw, cfg.seed)
        st = raw.get("storage")
        cfg.storage = None if st is None else _str(f"{source}: storage", st)
        out = Path(_str(f"{source}: output", raw.get("output", "_results"))).expanduser()
        cfg.output = out if out.is_absolute() else base / out
        cfg.baselines = parse_baselines(f"{source}: baselines",
                                        raw.get("baselines", list(DEFAULT_BASELINES)))
        cfg.train, cfg.search_train = _parse_train(source, raw)
        cfg.threads = _int(f"{source}: threads", raw.get("threads", 1), minimum=1)
        cfg.pruning = _parse_pruning(source, raw)
        return cfg

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StudyConfig":
        """Read and validate a study YAML file."""
        path = Path(path)
        return cls.from_dict(_read_yaml(path), source=str(path), base_dir=path.parent.resolve(),
                             path=path)

    # -- derived --------------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        """``<output>/<name>``: journal storage, per-trial files, pareto.csv/json/html."""
        return self.output / self.name

    def candidate_dims(self, method: str) -> tuple[int, ...]:
        """The method's candidate dims, without those above ``D`` (one search space can
        serve studies of different ``D``)."""
        return tuple(d for d in self.search_space.dims_for(method) if d <= self.D)

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    def with_methods(self, methods: Sequence[str]) -> "StudyConfig":
        """A copy restricted to ``methods`` (validated like the file's ``methods``)."""
        new = replace(self, methods=parse_methods("--method", list(methods)))
        new.search_space.check_methods(new.methods)
        return new

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot (stored with the study so a folder describes itself)."""
        return {
            "name": self.name, "path": str(self.path) if self.path else None,
            "dataset": self.dataset, "backbone": self.backbone,
            "backbone_kwargs": self.backbone_kwargs, "D": self.D, "methods": self.methods,
            "search_space": self.search_space.to_dict(),
            "search_space_path": str(self.search_space_path) if self.search_space_path else None,
            "budgets": self.budgets, "objectives": self.objectives, "n_trials": self.n_trials,
            "sampler": self.sampler, "seed": self.seed, "output": str(self.output),
            "baselines": self.baselines, "train": asdict(self.train),
            "search_train": asdict(self.search_train), "pruning": asdict(self.pruning),
            "threads": self.threads,
        }


def load_study_config(path: str | os.PathLike) -> StudyConfig:
    """Read and validate a study YAML file (see :class:`StudyConfig`)."""
    return StudyConfig.load(path)


def parse_methods(where: str, value: Any) -> list[str]:
    """``"all"``, a name or a list of names -> registered searcher names (validated)."""
    from autodim.searchers import get_searcher, list_searchers

    if value == "all" or value == ["all"]:
        # Searchers that do not retrain their plan (magprune) are baselines, not methods.
        return [m for m in list_searchers() if get_searcher(m).retrain]
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise ConfigError(f"{where}: expected a method name, a list of names or 'all', got "
                          f"{value!r}")
    registered = list_searchers()
    for n in names:
        if not isinstance(n, str) or n not in registered:
            raise ConfigError(f"{where}: unknown method {n!r}{_hint(str(n), registered)}; "
                              f"registered: {', '.join(registered)} (or 'all')")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: duplicate method in {names}")
    return list(names)


def parse_baselines(where: str, value: Any) -> list[str]:
    if value in (None, False, []):
        return []
    names = list(DEFAULT_BASELINES) if value == "all" else value
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list):
        raise ConfigError(f"{where}: expected a list of baseline names, got {value!r}")
    for n in names:
        if n not in BASELINE_NAMES:
            raise ConfigError(f"{where}: unknown baseline {n!r}{_hint(str(n), BASELINE_NAMES)}; "
                              f"choose from {', '.join(BASELINE_NAMES)}")
    return list(dict.fromkeys(names))



# -- the sections of a study file -------------------------------------------------------
def _parse_name(source: str, raw: Mapping[str, Any], path: Path | None) -> str:
    default_name = path.stem if path is not None else "study"
    name = _str(f"{source}: name", raw.get("name", default_name))
    if any(c in name for c in "/\\:") or name.startswith("."):
        raise ConfigError(f"{source}: name: {name!r} cannot be a folder name")
    return name


def _parse_dataset(source: str, raw: Mapping[str, Any], base: Path) -> dict[str, Any]:
    if "dataset" not in raw:
        raise ConfigError(f"{source}: dataset: missing (e.g. 'dataset: synthetic' or "
                          "'dataset: {source: ~/.cache/autodim/ml-100k}')")
    ds = raw["dataset"]
    ds = {"source": ds} if isinstance(ds, str) else _mapping(f"{source}: dataset", ds)
    if "source" not in ds:
        raise ConfigError(f"{source}: dataset.source: missing (e.g. 'synthetic')")
    src = _str(f"{source}: dataset.source", ds["source"])
    return {"source": _resolve_source(src, base), **{k: v for k, v in ds.items()
                                                     if k != "source"}}


def _parse_backbone(source: str, raw: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    bb = raw.get("backbone", "fm")
    if isinstance(bb, str):
        backbone, kwargs = bb, {}
    else:
        bb = _mapping(f"{source}: backbone", bb)
        if "name" not in bb:
            raise ConfigError(f"{source}: backbone.name: missing (lr, fm, deepfm, dcnv2)")
        backbone = _str(f"{source}: backbone.name", bb["name"])
        kwargs = {k: v for k, v in bb.items() if k != "name"}
    from autodim.models import list_backbones

    if backbone not in list_backbones():
        raise ConfigError(f"{source}: backbone: unknown backbone {backbone!r}"
                          f"{_hint(backbone, list_backbones())}; choose from "
                          f"{', '.join(list_backbones())}")
    return backbone, kwargs


def _parse_search_space(source: str, raw: Mapping[str, Any], base: Path,
                        methods: Sequence[str], D: int) -> tuple[Path | None, SearchSpace]:
    """The search-space file (``None`` and the default space when not given), checked
    against the study's methods and ``D``."""
    sp, space = None, SearchSpace()
    if raw.get("search_space") is not None:
        sp = Path(_str(f"{source}: search_space", raw["search_space"])).expanduser()
        sp = sp if sp.is_absolute() else base / sp
        if not sp.is_file():
            raise ConfigError(f"{source}: search_space: file {str(sp)!r} not found (paths "
                              f"are relative to the study file's folder)")
        space = load_search_space(sp)
    space.check_methods(methods)
    for m in methods:
        dims = space.dims_for(m)
        if not [d for d in dims if d <= D]:
            raise ConfigError(f"{space.source}: candidate dims {list(dims)} "
                              f"of method {m!r} all exceed the study's D={D}")
    return sp, space


def _parse_budgets(source: str, raw: Mapping[str, Any]) -> list[Any]:
    if "budget" in raw and "budgets" in raw:
        raise ConfigError(f"{source}: give 'budget' or 'budgets', not both")
    budgets = raw.get("budgets", raw.get("budget", "10x"))
    budgets = budgets if isinstance(budgets, list) else [budgets]
    if not budgets:
        raise ConfigError(f"{source}: budgets: expected at least one budget")
    from autodim.budget import parse_budget

    for i, b in enumerate(budgets):
        if isinstance(b, bool) or not isinstance(b, (str, int, float)):
            raise ConfigError(f"{source}: budgets[{i}]: expected '10x', '2MB' or a byte "
                              f"count, got {b!r}")
        try:
            parse_budget(b, 10**12)
        except ConfigError as exc:
            raise ConfigError(f"{source}: budgets[{i}]: {exc}") from None
    if len({str(b) for b in budgets}) != len(budgets):
        raise ConfigError(f"{source}: budgets: duplicate budget in {budgets}")
    return [b if isinstance(b, str) else int(b) for b in budgets]


def _parse_objectives(source: str, raw: Mapping[str, Any]) -> list[str]:
    objs = raw.get("objectives", ["val_auc", "bytes"])
    if not isinstance(objs, list) or not objs:
        raise ConfigError(f"{source}: objectives: expected a list like [val_auc, bytes]")
    for o in objs:
        if o not in OBJECTIVES:
            raise ConfigError(f"{source}: objectives: unknown objective {o!r}"
                              f"{_hint(o, list(OBJECTIVES))}; choose from "
                              f"{', '.join(OBJECTIVES)}")
    if len(set(objs)) != len(objs):
        raise ConfigError(f"{source}: objectives: duplicate objective in {objs}")
    return list(objs)


def _parse_sampler(source: str, raw: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """``sampler:`` checked against :data:`SAMPLERS`; its seed defaults to the study's."""
    smp = raw.get("sampler", "tpe")
    smp = {"name": smp} if isinstance(smp, str) else _mapping(f"{source}: sampler", smp)
    sname = smp.get("name", "tpe")
    if sname not in SAMPLERS:
        raise ConfigError(f"{source}: sampler.name: unknown sampler {sname!r}"
                          f"{_hint(sname, list(SAMPLERS))}; choose from "
                          f"{', '.join(SAMPLERS)}")
    spec = SAMPLERS[sname]
    _check_keys(f"{source}: sampler", smp, spec.keys)
    smp = dict(smp, name=sname)
    smp["seed"] = _int(f"{source}: sampler.seed", smp.get("seed", seed), minimum=0)
    for key, (kind, *minimum) in spec.options.items():
        if key in smp:
            where = f"{source}: sampler.{key}"
            smp[key] = (_int(where, smp[key], minimum=minimum[0]) if kind == "int" else
                        _bool(where, smp[key]) if kind == "bool" else
                        _float(where, smp[key]))
    return smp


def _parse_train(source: str, raw: Mapping[str, Any]) -> tuple[TrainSettings, TrainSettings]:
    """``train`` (the retrains) and ``search_train`` (the searchers' own training)."""
    train = TrainSettings.parse(f"{source}: train", raw.get("train"), TrainSettings())
    search_train = TrainSettings.parse(f"{source}: search_train", raw.get("search_train"),
                                       TrainSettings(epochs=2, patience=1))
    for key, ts in (("train", train), ("search_train", search_train)):
        check_one_device(f"{source}: {key}.devices", ts.devices)
    return train, search_train


def _parse_pruning(source: str, raw: Mapping[str, Any]) -> PruningSettings:
    pr = raw.get("pruning", {})
    if pr is False or pr is None:
        return PruningSettings(enabled=False)
    pr = _mapping(f"{source}: pruning", pr)
    _check_keys(f"{source}: pruning", pr, PRUNING_KEYS)
    return PruningSettings(
        after_epochs=_int(f"{source}: pruning.after_epochs", pr.get("after_epochs", 2),
                          minimum=2),
        margin=_float(f"{source}: pruning.margin", pr.get("margin", 0.01)))


def _resolve_source(source: str, base: Path) -> str:
    """Data sources that are paths resolve against the study file's folder."""
    if source == "synthetic" or source.startswith("synthetic:"):
        return source
    expanded = Path(source).expanduser()
    if expanded.is_absolute():
        return str(expanded)
    candidate = base / expanded
    if candidate.exists():
        return str(candidate)
    return source  # a registered name ('ml-100k') or a path relative to the working folder
