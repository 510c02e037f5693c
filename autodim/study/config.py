"""Study files (``studies/*.yaml``) and search-space files (``search_spaces/*.yaml``).

Both are parsed into plain dataclasses and validated before any data is loaded or any
model is trained, so a typo costs a second, not a study. Every error names the file and the
key at fault (``studies/quick.yaml: sampler.name: unknown sampler 'tpee' (did you mean
'tpe'?)``). The formats are documented in the README (section "Studies").

Example:
    >>> from autodim.study.config import StudyConfig
    >>> cfg = StudyConfig.from_dict({"dataset": "synthetic:tiny", "methods": "blackbox",
    ...                              "budget": "10x", "n_trials": 2})
    >>> cfg.name, cfg.methods, cfg.budgets
    ('study', ['blackbox'], ['10x'])
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from autodim._io import safe_yaml_load
from autodim.defaults import DEFAULT_LR
from autodim.errors import ConfigError

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
        experimental: The constructor arguments Optuna calls experimental; its warning about
            them is noise, so the runner silences it.
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
DEFAULT_CANDIDATE_DIMS: tuple[int, ...] = (0, 1, 2, 4, 8, 16)  # 0: the field is dropped

STUDY_KEYS = ("name", "dataset", "backbone", "D", "methods", "method", "search_space",
              "budget", "budgets", "objectives", "n_trials", "sampler", "seed", "storage",
              "output", "baselines", "train", "search_train", "pruning", "threads")
TRAIN_KEYS = ("epochs", "batch_size", "lr", "patience", "weight_decay", "limit_train_batches",
              "accelerator", "devices", "strategy")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
PRUNING_KEYS = ("after_epochs", "margin")
SPACE_KEYS = ("candidate_dims", "methods", "memcom", "compress")
COMPRESS_KEYS = ("enabled", "bits", "train", "scale", "scalars", "estimator", "distill",
                 "temperature", "warm_start")
METHOD_KEYS = ("params", "candidate_dims")
MEMCOM_KEYS = ("enabled", "inflate", "ratio", "min_rows")
PARAM_KEYS = {"int": ("type", "low", "high", "step", "log"),
              "float": ("type", "low", "high", "step", "log"),
              "categorical": ("type", "choices"),
              "fixed": ("type", "value")}


# -- small validation helpers ------------------------------------------------------------
def _hint(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(where: str, mapping: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}{_hint(key, allowed)}; valid keys: "
                              f"{', '.join(allowed)}")


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping (key: value lines), got "
                          f"{type(value).__name__} {value!r}")
    return dict(value)


def _int(where: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if not number.is_integer():
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if minimum is not None and number < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value!r}")
    return int(number)


def _float(where: str, value: Any) -> float:
    # YAML 1.1 reads "1e-4" (no dot) as a string: accept numeric strings so users need not
    # know that rule.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if math.isnan(number):
        raise ConfigError(f"{where}: expected a number, got NaN")
    return number


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _str(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _dims(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of dims, got {value!r}")
    dims = tuple(sorted({_int(f"{where}[{i}]", v, minimum=0) for i, v in enumerate(value)}))
    return dims


# -- search spaces ----------------------------------------------------------------------
@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter: an Optuna distribution (``int``, ``float``, ``categorical``) or a
    ``fixed`` value that is passed through without being searched."""

    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    value: Any = None

    @classmethod
    def parse(cls, where: str, raw: Any) -> "ParamSpec":
        """A plain value is fixed; a mapping with ``type`` is a distribution."""
        if not isinstance(raw, Mapping):
            return cls(type="fixed", value=raw)
        kind = raw.get("type")
        if kind is None:
            raise ConfigError(f"{where}: a distribution needs 'type' (one of "
                              f"{', '.join(PARAM_KEYS)}); got keys {sorted(raw)}")
        if kind not in PARAM_KEYS:
            raise ConfigError(f"{where}.type: unknown distribution type {kind!r}"
                              f"{_hint(kind, list(PARAM_KEYS))}; use one of "
                              f"{', '.join(PARAM_KEYS)}")
        _check_keys(where, raw, PARAM_KEYS[kind])
        if kind == "fixed":
            return cls(type="fixed", value=raw.get("value"))
        if kind == "categorical":
            choices = raw.get("choices")
            if not isinstance(choices, (list, tuple)) or not choices:
                raise ConfigError(f"{where}.choices: expected a non-empty list, got {choices!r}")
            for i, c in enumerate(choices):
                if c is not None and not isinstance(c, (bool, int, float, str)):
                    raise ConfigError(f"{where}.choices[{i}]: categorical choices must be "
                                      f"None, bool, int, float or str, got {c!r}")
            return cls(type="categorical", choices=tuple(choices))
        for key in ("low", "high"):
            if key not in raw:
                raise ConfigError(f"{where}: a {kind} distribution needs {key!r}")
        num = _int if kind == "int" else _float
        low, high = num(f"{where}.low", raw["low"]), num(f"{where}.high", raw["high"])
        if low > high:
            raise ConfigError(f"{where}: low {low!r} is greater than high {high!r}")
        log = _bool(f"{where}.log", raw.get("log", False))
        step = raw.get("step")
        if step is not None:
            step = num(f"{where}.step", step)
            if step <= 0:
                raise ConfigError(f"{where}.step: must be > 0, got {step!r}")
            if log:
                raise ConfigError(f"{where}: 'step' and 'log: true' cannot be combined")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log distribution needs low > 0, got {low!r}")
        return cls(type=kind, low=low, high=high, step=step, log=log)

    @property
    def searched(self) -> bool:
        return self.type != "fixed"

    def distribution(self):
        """The Optuna distribution (``None`` for fixed values)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=int(self.step or 1))
        if self.type == "float":
            return FloatDistribution(float(self.low), float(self.high), log=self.log,
                                     step=None if self.step is None else float(self.step))
        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        return None

    def suggest(self, trial, name: str) -> Any:
        """Sample (or replay, for enqueued/retried trials) the value of ``name``."""
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        if self.type == "float":
            return trial.suggest_float(name, float(self.low), float(self.high),
                                       step=None if self.step is None else float(self.step),
                                       log=self.log)
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        return self.value

    def candidates(self) -> list[Any]:
        """A few representative values (for error messages and tests)."""
        if self.type == "fixed":
            return [self.value]
        if self.type == "categorical":
            return list(self.choices)
        return [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        if self.type == "fixed":
            return {"type": "fixed", "value": self.value}
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


@dataclass(frozen=True)
class MethodSpace:
    """A method's searched settings and (optionally) its own candidate dims."""

    params: dict[str, ParamSpec] = field(default_factory=dict)
    candidate_dims: tuple[int, ...] | None = None


@dataclass(frozen=True)
class MemcomSpace:
    """How the study decides MEmCom on top of a searched plan.

    ``inflate`` (>= 1) lets the searcher spend ``inflate x budget`` bytes; MEmCom is then
    applied to the fields where it saves the most bytes per unit of lost accuracy until the
    plan fits the real budget. ``ratio`` sets the buckets of a hashed field
    (``m = ceil(ratio * rows)``). Fields with fewer than ``min_rows`` rows are never hashed.
    """

    enabled: bool = True
    inflate: ParamSpec = ParamSpec(type="categorical", choices=(1.0, 1.5, 2.0, 3.0))
    ratio: ParamSpec = ParamSpec(type="float", low=0.02, high=0.5, log=True)
    min_rows: int = 500


@dataclass(frozen=True)
class CompressSpace:
    """The compressor (:func:`autodim.compress.compress_plan`) that fits a searched plan
    into the budget over dims x bits x MEmCom per field. Off by default (then the greedy
    MEmCom step of ``memcom`` runs). ``bits`` samples a set of allowed precisions, written
    ``"32,16,8,4"``; ``train`` samples ``qat``/``ptq``, ``scale`` ``row``/``field``. The
    hashing option uses ``memcom.ratio`` (when ``memcom.enabled``). ``estimator``: ``model``
    (losses measured on the full-``D`` model, trained once per study) or ``proxy``.
    ``distill`` (a weight, 0 = off; may be sampled) trains the compact model towards that
    full model's probabilities at ``temperature`` as well (:class:`autodim.task.Distill`).
    ``warm_start`` starts the compact model from that full model
    (:func:`autodim.compress.warm_start_embedding`, backbone copied)."""

    enabled: bool = False
    bits: ParamSpec = ParamSpec(type="fixed", value="32,16,8,4")
    train: ParamSpec = ParamSpec(type="fixed", value="qat")
    scale: ParamSpec = ParamSpec(type="fixed", value="row")
    scalars: str = "float16"
    estimator: str = "proxy"
    distill: ParamSpec = ParamSpec(type="fixed", value=0.0)
    temperature: float = 1.0
    warm_start: bool = False

    @staticmethod
    def parse_bits(where: str, value: Any) -> tuple[int, ...]:
        from autodim.embeddings.quant import ALLOWED_BITS

        try:
            bits = tuple(int(b) for b in str(value).split(","))
        except ValueError:
            bits = ()
        if not bits or any(b not in ALLOWED_BITS for b in bits):
            raise ConfigError(f"{where}: {value!r} is not a comma-separated list of bits from "
                              f"{', '.join(map(str, ALLOWED_BITS))}")
        return bits

    @classmethod
    def from_dict(cls, where: str, raw: Any) -> "CompressSpace":
        raw = _mapping(where, raw)
        _check_keys(where, raw, COMPRESS_KEYS)
        d = cls()
        out = cls(enabled=_bool(f"{where}.enabled", raw.get("enabled", False)),
                  **{k: ParamSpec.parse(f"{where}.{k}", raw[k]) if k in raw else getattr(d, k)
                     for k in ("bits", "train", "scale", "distill")},
                  scalars=str(raw.get("scalars", d.scalars)),
                  estimator=str(raw.get("estimator", d.estimator)),
                  temperature=_float(f"{where}.temperature",
                                     raw.get("temperature", d.temperature)),
                  warm_start=_bool(f"{where}.warm_start", raw.get("warm_start", False)))
        for v in out.distill.candidates():
            if _float(f"{where}.distill", v) < 0:
                raise ConfigError(f"{where}.distill: weight {v!r} must be >= 0")
        if out.temperature <= 0:
            raise ConfigError(f"{where}.temperature: must be > 0, got {out.temperature!r}")
        for v in out.bits.candidates():
            cls.parse_bits(f"{where}.bits", v)
        for key, allowed in (("train", ("qat", "ptq")), ("scale", ("row", "field"))):
            for v in getattr(out, key).candidates():
                if v not in allowed:
                    raise ConfigError(f"{where}.{key}: {v!r} is not one of {', '.join(allowed)}")
        for key, v, allowed in (("scalars", out.scalars, ("float32", "float16", "int8")),
                                ("estimator", out.estimator, ("model", "proxy"))):
            if v not in allowed:
                raise ConfigError(f"{where}.{key}: {v!r} is not one of {', '.join(allowed)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "bits": self.bits.to_dict(),
                "train": self.train.to_dict(), "scale": self.scale.to_dict(),
                "scalars": self.scalars, "estimator": self.estimator,
                "distill": self.distill.to_dict(), "temperature": self.temperature,
                "warm_start": self.warm_start}


@dataclass(frozen=True)
class SearchSpace:
    """Per-method hyperparameter ranges, candidate dims and MEmCom settings."""

    candidate_dims: tuple[int, ...] = DEFAULT_CANDIDATE_DIMS
    methods: dict[str, MethodSpace] = field(default_factory=dict)
    memcom: MemcomSpace = MemcomSpace()
    source: str = "<default>"
    compress: CompressSpace = CompressSpace()

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "<search space>") -> "SearchSpace":
        raw = _mapping(source, raw)
        _check_keys(source, raw, SPACE_KEYS)
        dims = (_dims(f"{source}: candidate_dims", raw["candidate_dims"])
                if "candidate_dims" in raw else DEFAULT_CANDIDATE_DIMS)
        methods: dict[str, MethodSpace] = {}
        for name, entry in _mapping(f"{source}: methods", raw.get("methods")).items():
            where = f"{source}: methods.{name}"
            entry = _mapping(where, entry)
            _check_keys(where, entry, METHOD_KEYS)
            params = {str(k): ParamSpec.parse(f"{where}.params.{k}", v)
                      for k, v in _mapping(f"{where}.params", entry.get("params")).items()}
            cands = (_dims(f"{where}.candidate_dims", entry["candidate_dims"])
                     if entry.get("candidate_dims") is not None else None)
            methods[str(name)] = MethodSpace(params=params, candidate_dims=cands)
        mc = _mapping(f"{source}: memcom", raw.get("memcom"))
        _check_keys(f"{source}: memcom", mc, MEMCOM_KEYS)
        default = MemcomSpace()
        memcom = MemcomSpace(
            enabled=_bool(f"{source}: memcom.enabled", mc.get("enabled", True)),
            inflate=(ParamSpec.parse(f"{source}: memcom.inflate", mc["inflate"])
                     if "inflate" in mc else default.inflate),
            ratio=(ParamSpec.parse(f"{source}: memcom.ratio", mc["ratio"])
                   if "ratio" in mc else default.ratio),
            min_rows=_int(f"{source}: memcom.min_rows", mc.get("min_rows", default.min_rows),
                          minimum=2))
        for key, spec, lo, hi in (("inflate", memcom.inflate, 1.0, math.inf),
                                  ("ratio", memcom.ratio, 0.0, 1.0)):
            for v in spec.candidates():
                x = _float(f"{source}: memcom.{key}", v)
                if not (lo <= x <= hi) or (key == "ratio" and x <= 0):
                    raise ConfigError(f"{source}: memcom.{key}: value {v!r} is out of range "
                                      f"({'>= 1' if key == 'inflate' else 'in (0, 1]'})")
        compress = CompressSpace.from_dict(f"{source}: compress", raw.get("compress"))
        return cls(candidate_dims=dims, methods=methods, memcom=memcom, source=source,
                   compress=compress)

    def dims_for(self, method: str) -> tuple[int, ...]:
        space = self.methods.get(method)
        return space.candidate_dims if space and space.candidate_dims else self.candidate_dims

    def check_methods(self, methods: Sequence[str]) -> None:
        """Check each used method's parameter names against its searcher's settings."""
        from autodim.searchers import get_searcher

        for method in methods:
            space = self.methods.get(method)
            if space is None:
                continue
            cls = get_searcher(method)
            sig = inspect.signature(cls.__init__)
            if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
                continue
            valid = [p for p in sig.parameters if p != "self"]
            for name in space.params:
                if name not in valid:
                    raise ConfigError(f"{self.source}: methods.{method}.params.{name}: "
                                      f"{method!r} has no setting {name!r}{_hint(name, valid)}; "
                                      f"its settings: {', '.join(valid) or '(none)'}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate_dims": list(self.candidate_dims),
            "methods": {m: {"params": {k: p.to_dict() for k, p in s.params.items()},
                            **({"candidate_dims": list(s.candidate_dims)}
                               if s.candidate_dims else {})}
                        for m, s in self.methods.items()},
            "memcom": {"enabled": self.memcom.enabled, "inflate": self.memcom.inflate.to_dict(),
                       "ratio": self.memcom.ratio.to_dict(), "min_rows": self.memcom.min_rows},
            "compress": self.compress.to_dict(),
        }


def load_search_space(path: str | os.PathLike) -> SearchSpace:
    """Read and validate a search-space YAML file."""
    path = Path(path)
    return SearchSpace.from_dict(_read_yaml(path), source=str(path))


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
        """Validate a study mapping; relative paths resolve against ``base_dir``."""
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        raw = _mapping(source, raw)
        _check_keys(source, raw, STUDY_KEYS)
        cfg = cls(path=path)
        default_name = path.stem if path is not None else "study"
        cfg.name = _str(f"{source}: name", raw.get("name", default_name))
        if any(c in cfg.name for c in "/\\:") or cfg.name.startswith("."):
            raise ConfigError(f"{source}: name: {cfg.name!r} cannot be a folder name")

        # dataset
        if "dataset" not in raw:
            raise ConfigError(f"{source}: dataset: missing (e.g. 'dataset: synthetic' or "
                              "'dataset: {source: ~/.cache/autodim/ml-100k}')")
        ds = raw["dataset"]
        ds = {"source": ds} if isinstance(ds, str) else _mapping(f"{source}: dataset", ds)
        if "source" not in ds:
            raise ConfigError(f"{source}: dataset.source: missing (e.g. 'synthetic')")
        src = _str(f"{source}: dataset.source", ds["source"])
        cfg.dataset = {"source": _resolve_source(src, base), **{k: v for k, v in ds.items()
                                                                  if k != "source"}}

        # model
        bb = raw.get("backbone", "fm")
        if isinstance(bb, str):
            cfg.backbone, cfg.backbone_kwargs = bb, {}
        else:
            bb = _mapping(f"{source}: backbone", bb)
            if "name" not in bb:
                raise ConfigError(f"{source}: backbone.name: missing (lr, fm, deepfm, dcnv2)")
            cfg.backbone = _str(f"{source}: backbone.name", bb["name"])
            cfg.backbone_kwargs = {k: v for k, v in bb.items() if k != "name"}
        from autodim.models import list_backbones

        if cfg.backbone not in list_backbones():
            raise ConfigError(f"{source}: backbone: unknown backbone {cfg.backbone!r}"
                              f"{_hint(cfg.backbone, list_backbones())}; choose from "
                              f"{', '.join(list_backbones())}")
        cfg.D = _int(f"{source}: D", raw.get("D", 16), minimum=1)

        # methods
        if "method" in raw and "methods" in raw:
            raise ConfigError(f"{source}: give 'methods' or 'method', not both")
        cfg.methods = parse_methods(f"{source}: methods", raw.get("methods", raw.get(
            "method", "blackbox")))

        # search space
        if raw.get("search_space") is not None:
            sp = Path(_str(f"{source}: search_space", raw["search_space"])).expanduser()
            sp = sp if sp.is_absolute() else base / sp
            if not sp.is_file():
                raise ConfigError(f"{source}: search_space: file {str(sp)!r} not found (paths "
                                  f"are relative to the study file's folder)")
            cfg.search_space_path = sp
            cfg.search_space = load_search_space(sp)
        cfg.search_space.check_methods(cfg.methods)
        for m in cfg.methods:
            dims = cfg.search_space.dims_for(m)
            if not [d for d in dims if d <= cfg.D]:
                raise ConfigError(f"{cfg.search_space.source}: candidate dims {list(dims)} "
                                  f"of method {m!r} all exceed the study's D={cfg.D}")

        # budgets
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
        cfg.budgets = [b if isinstance(b, str) else int(b) for b in budgets]

        # objectives
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
        cfg.objectives = list(objs)

        cfg.n_trials = _int(f"{source}: n_trials", raw.get("n_trials", 20), minimum=0)
        cfg.seed = _int(f"{source}: seed", raw.get("seed", 0), minimum=0)

        # sampler
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
        smp["seed"] = _int(f"{source}: sampler.seed", smp.get("seed", cfg.seed), minimum=0)
        for key, (kind, *minimum) in spec.options.items():
            if key in smp:
                where = f"{source}: sampler.{key}"
                smp[key] = (_int(where, smp[key], minimum=minimum[0]) if kind == "int" else
                            _bool(where, smp[key]) if kind == "bool" else
                            _float(where, smp[key]))
        cfg.sampler = smp

        st = raw.get("storage")
        cfg.storage = None if st is None else _str(f"{source}: storage", st)
        out = Path(_str(f"{source}: output", raw.get("output", "_results"))).expanduser()
        cfg.output = out if out.is_absolute() else base / out

        cfg.baselines = parse_baselines(f"{source}: baselines",
                                        raw.get("baselines", list(DEFAULT_BASELINES)))
        cfg.train = TrainSettings.parse(f"{source}: train", raw.get("train"), TrainSettings())
        cfg.search_train = TrainSettings.parse(f"{source}: search_train",
                                               raw.get("search_train"),
                                               TrainSettings(epochs=2, patience=1))
        for key, ts in (("train", cfg.train), ("search_train", cfg.search_train)):
            check_one_device(f"{source}: {key}.devices", ts.devices)
        cfg.threads = _int(f"{source}: threads", raw.get("threads", 1), minimum=1)
        pr = raw.get("pruning", {})
        if pr is False or pr is None:
            cfg.pruning = PruningSettings(enabled=False)
        else:
            pr = _mapping(f"{source}: pruning", pr)
            _check_keys(f"{source}: pruning", pr, PRUNING_KEYS)
            cfg.pruning = PruningSettings(
                after_epochs=_int(f"{source}: pruning.after_epochs", pr.get("after_epochs", 2),
                                  minimum=2),
                margin=_float(f"{source}: pruning.margin", pr.get("margin", 0.01)))
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


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return safe_yaml_load(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 at byte offset {exc.start}; re-save the "
                          "file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', exc)})"
                          ) from None
