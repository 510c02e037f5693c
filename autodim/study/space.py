"""Search-space files (``search_spaces/*.yaml``): per-method hyperparameter ranges,
candidate dims, and the MEmCom and compressor settings a study samples.

Example:
    >>> from autodim.study.space import SearchSpace
    >>> space = SearchSpace.from_dict({"candidate_dims": [0, 2, 4]})
    >>> space.dims_for("blackbox")
    (0, 2, 4)
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from autodim.errors import ConfigError
from autodim.study._validate import (
    _bool,
    _check_keys,
    _dims,
    _float,
    _hint,
    _int,
    _mapping,
    _read_yaml,
)

__all__ = ["ParamSpec", "MethodSpace", "MemcomSpace", "CompressSpace", "SearchSpace",
           "load_search_space", "DEFAULT_CANDIDATE_DIMS"]

DEFAULT_CANDIDATE_DIMS: tuple[int, ...] = (0, 1, 2, 4, 8, 16)  # 0: the field is dropped

SPACE_KEYS = ("candidate_dims", "methods", "memcom", "compress")
COMPRESS_KEYS = ("enabled", "bits", "train", "scale", "scalars", "estimator", "estimate_on",
                 "drop_fields", "refit", "distill",
                 "temperature", "warm_start")
METHOD_KEYS = ("params", "candidate_dims")
MEMCOM_KEYS = ("enabled", "inflate", "ratio", "min_rows")
PARAM_KEYS = {"int": ("type", "low", "high", "step", "log"),
              "float": ("type", "low", "high", "step", "log"),
              "categorical": ("type", "choices"),
              "fixed": ("type", "value")}



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
    (losses measured on the full-``D`` model, trained once per study) or ``proxy``;
    ``estimate_on`` the rows it measures them on, ``train`` (default; see
    :class:`autodim.compress.ModelLoss` for why) or ``val``; ``drop_fields`` (with ``model``)
    drops the fields a mean-ablation test on the validation rows flags: ``harmful``
    (default: the full model is better without them), ``idle`` (not needed) or ``none``;
    ``refit`` (default true) then trains the full model again without them, tests it again,
    and measures the options on that reference (cached in the study folder beside the
    teacher), which distillation and the warm start then read.
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
    estimate_on: str = "train"
    drop_fields: str = "harmful"
    refit: bool = True
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
                  estimate_on=str(raw.get("estimate_on", d.estimate_on)),
                  drop_fields=str(raw.get("drop_fields", d.drop_fields)),
                  refit=_bool(f"{where}.refit", raw.get("refit", d.refit)),
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
                                ("estimator", out.estimator, ("model", "proxy")),
                                ("estimate_on", out.estimate_on, ("train", "val")),
                                ("drop_fields", out.drop_fields, ("harmful", "idle", "none"))):
            if v not in allowed:
                raise ConfigError(f"{where}.{key}: {v!r} is not one of {', '.join(allowed)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "bits": self.bits.to_dict(),
                "train": self.train.to_dict(), "scale": self.scale.to_dict(),
                "scalars": self.scalars, "estimator": self.estimator,
                "estimate_on": self.estimate_on, "drop_fields": self.drop_fields,
                "refit": self.refit, "distill": self.distill.to_dict(),
                "temperature": self.temperature, "warm_start": self.warm_start}


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
