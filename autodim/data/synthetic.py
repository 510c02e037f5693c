"""Planted synthetic CTR data: the built-in default dataset (no download).

Each field draws Zipf-distributed ids. A hidden teacher scores a row as

    z = b + sum_f a_f(id_f) + sum_{f<g} <u_f(id_f), u_g(id_g)>,    u_f(i) = V_f[i] A_f

with ``V_f[i]`` an ``r_f``-dim latent vector per id and ``A_f`` an ``r_f x K`` map into a
common K-dim space, so field f's information has rank ``r_f`` (its planted rank). Fields
with ``r_f = 0`` are pure noise: no first-order term, no interaction. Labels are drawn from
``sigmoid(z)``; the teacher's probabilities are kept, so the Bayes-optimal AUC is known.

Latent vectors are never stored: they come from a counter-based hash of (seed, field, id,
column), so a Criteo-size vocabulary (33.7M ids) costs no memory beyond the rows drawn.
Rows are i.i.d., so the train/val/test splits are contiguous blocks (equivalent to a random
split and free of copies).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from autodim.data.dataset import CTRData, Split
from autodim.data.schema import Field, Schema
from autodim.errors import DataError

__all__ = ["PlantedConfig", "PRESETS", "make_planted", "bayes_auc", "planted_dims",
           "rank_informed_dims"]

# Criteo Kaggle (Display Advertising Challenge) categorical cardinalities C1..C26.
CRITEO_KAGGLE_CARDINALITIES = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
    14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]


@dataclass
class PlantedConfig:
    """Settings of a planted dataset.

    Attributes:
        cardinalities: Ids per field (the vocab is this + 1 for the OOV row 0).
        ranks: Planted rank per field (0 = noise field).
        rows: Total rows (split 8:1:1 into train/val/test by default).
        zipf: Zipf exponent of the id distribution (p(k) ~ k^-zipf): one for every field, or
            a list with one per field.
        latent_dim: K, the common space of the teacher's interactions.
        logit_std: Target standard deviation of the teacher's logit (sets the Bayes AUC).
        first_order: Share of the logit variance given to first-order terms.
        seed: Everything is deterministic from it.
    """

    cardinalities: list[int]
    ranks: list[int]
    rows: int = 200_000
    zipf: float | list[float] = 1.05
    latent_dim: int = 16
    logit_std: float = 2.0
    first_order: float = 0.3
    bias: float = -0.5
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    names: list[str] | None = None
    chunk_rows: int = 1_000_000

    def __post_init__(self) -> None:
        if len(self.cardinalities) != len(self.ranks):
            raise DataError(f"planted data: {len(self.cardinalities)} cardinalities but "
                            f"{len(self.ranks)} ranks")
        for what, values in (("cardinalities", self.cardinalities), ("ranks", self.ranks)):
            if not isinstance(values, (list, tuple)) or not values or any(
                    isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
                raise DataError(f"planted data: {what} must be a non-empty list of integers, "
                                f"got {values!r}")
        if any(c < 1 for c in self.cardinalities) or any(r < 0 for r in self.ranks):
            raise DataError("planted data: cardinalities must be >= 1 and ranks >= 0")
        zipfs = self.zipf if isinstance(self.zipf, (list, tuple)) else [self.zipf]
        if isinstance(self.zipf, (list, tuple)) and len(zipfs) != len(self.cardinalities):
            raise DataError(f"planted data: {len(self.cardinalities)} cardinalities but "
                            f"{len(zipfs)} zipf exponents")
        if any(isinstance(z, bool) or not isinstance(z, (int, float)) or not 0 <= z < 10
               for z in zipfs):
            raise DataError(f"planted data: zipf exponents must be numbers in [0, 10), got "
                            f"{self.zipf!r}")
        if self.rows < 10:
            raise DataError(f"planted data: rows must be >= 10, got {self.rows}")
        if not any(self.ranks):
            raise DataError("planted data: at least one field needs a rank > 0")

    def field_zipf(self, f: int) -> float:
        """Zipf exponent of field ``f``."""
        return float(self.zipf[f] if isinstance(self.zipf, (list, tuple)) else self.zipf)

    @property
    def field_names(self) -> list[str]:
        return self.names or [f"f{i:02d}" for i in range(len(self.cardinalities))]


# Calibrated so the planted allocation is learnably the right one: signal fields have few
# enough ids that each is seen many times, noise fields are large (a uniform plan wastes
# most of its bytes there).
PRESETS: dict[str, PlantedConfig] = {
    "planted": PlantedConfig(
        cardinalities=[30, 60, 120, 250, 400, 150, 3000, 6000, 10000, 4000],
        ranks=[1, 2, 4, 8, 12, 16, 0, 0, 0, 0], rows=200_000),
    # Vocabulary size carries no hint of the rank: the signal is in the LARGE fields (high
    # rank), the noise in small and medium ones, so "small vocabulary gets big dims" (mde)
    # spends its bytes on noise and a uniform plan splits them evenly; only a plan that reads
    # the signal wins. Signal fields draw ids with a flatter Zipf law (0.6) so even their
    # tail ids are seen dozens of times in 100k rows (the planted allocation is learnable).
    # At 4x the planted dims fit the budget exactly; at 10x the oracle must cut signal too.
    "decoupled": PlantedConfig(
        cardinalities=[600, 500, 450, 400, 10, 40, 100, 250, 380],
        ranks=[8, 6, 4, 2, 0, 0, 0, 0, 0], rows=200_000,
        zipf=[0.6, 0.6, 0.6, 0.6, 1.05, 1.05, 1.05, 1.05, 1.05]),
    "tiny": PlantedConfig(cardinalities=[20, 40, 60, 500, 800], ranks=[2, 4, 8, 0, 0],
                          rows=6_000),
    "criteo_kaggle": PlantedConfig(
        cardinalities=CRITEO_KAGGLE_CARDINALITIES,
        ranks=[4, 2, 0, 0, 8, 2, 0, 4, 1, 0, 4, 0, 8, 2, 0, 0, 1, 4, 8, 1, 0, 2, 2, 0, 4, 0],
        rows=10_000_000, zipf=1.1, names=[f"C{i}" for i in range(1, 27)]),
}


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a fast counter-based hash (uint64 -> uint64)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _hash_normal(key: int, ids: np.ndarray, cols: int) -> np.ndarray:
    """Deterministic standard normals ``[len(ids), cols]`` keyed by (key, id, column)."""
    base = ids.astype(np.uint64)[:, None] * np.uint64(2 * cols) + np.arange(
        2 * cols, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        h = _splitmix64(base ^ _splitmix64(np.array([key], dtype=np.uint64)))
    u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    u1, u2 = np.clip(u[:, :cols], 1e-12, 1.0), u[:, cols:]
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)  # Box-Muller


class _Teacher:
    def __init__(self, cfg: PlantedConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 7])
        K = cfg.latent_dim
        # A_f: r_f x K maps, scaled so each field's u_f has unit variance per coordinate.
        self.maps = [rng.standard_normal((r, K)) / np.sqrt(max(r, 1)) for r in cfg.ranks]
        self.cdfs = [self._zipf_cdf(n, cfg.field_zipf(f))
                     for f, n in enumerate(cfg.cardinalities)]
        self.scale_pair = 1.0
        self.scale_first = 1.0

    def _zipf_cdf(self, n: int, s: float) -> np.ndarray | None:
        if n > 5_000_000:
            return None  # sampled by inverse transform of the continuous approximation
        w = np.arange(1, n + 1, dtype=np.float64) ** -s
        return np.cumsum(w / w.sum())

    def draw_ids(self, rng: np.random.Generator, f: int, size: int) -> np.ndarray:
        n = self.cfg.cardinalities[f]
        u = rng.random(size)
        cdf = self.cdfs[f]
        if cdf is not None:
            return np.minimum(np.searchsorted(cdf, u), n - 1).astype(np.int64) + 1
        # Continuous Zipf on [1, n+1): inverse CDF of x^-s, then floor.
        s = self.cfg.field_zipf(f)
        a, b = 1.0, float(n + 1)
        if abs(s - 1.0) < 1e-9:  # x^-1: the inverse CDF is exponential
            x = np.exp(u * np.log(b))
        else:
            x = (a ** (1 - s) + u * (b ** (1 - s) - a ** (1 - s))) ** (1 / (1 - s))
        return np.minimum(np.floor(x), n).astype(np.int64)

    def parts(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first-order sum, pairwise sum) of the teacher's logit for ``ids[N, F]`` (1-based)."""
        cfg = self.cfg
        N = len(ids)
        first = np.zeros(N)
        total = np.zeros((N, cfg.latent_dim))
        sq = np.zeros(N)
        for f, r in enumerate(cfg.ranks):
            if r == 0:
                continue
            key = cfg.seed * 1_000_003 + f
            first += _hash_normal(key * 2 + 1, ids[:, f], 1)[:, 0]
            u = _hash_normal(key * 2, ids[:, f], r) @ self.maps[f]
            total += u
            sq += (u * u).sum(1)
        pair = 0.5 * ((total * total).sum(1) - sq)  # sum_{f<g} <u_f, u_g>
        return first, pair

    def calibrate(self, ids: np.ndarray) -> None:
        first, pair = self.parts(ids)
        cfg = self.cfg
        var_first, var_pair = cfg.first_order * cfg.logit_std ** 2, (
            1 - cfg.first_order) * cfg.logit_std ** 2
        self.scale_first = np.sqrt(var_first) / max(first.std(), 1e-9)
        self.scale_pair = np.sqrt(var_pair) / max(pair.std(), 1e-9)
        self.center = float((pair * self.scale_pair).mean())

    def logits(self, ids: np.ndarray) -> np.ndarray:
        first, pair = self.parts(ids)
        return self.cfg.bias + self.scale_first * first + self.scale_pair * pair - self.center


def planted_dims(ranks: list[int], D: int) -> list[int]:
    """The allocation a good search should approach: each field its rank, capped at D."""
    return [min(r, D) for r in ranks]


def rank_informed_dims(schema: Schema, ranks: dict[str, int], D: int, budget_bytes: int, *,
                       candidate_dims: list[int] | None = None) -> dict[str, int]:
    """The oracle plan under a byte budget: the dims that keep the most planted signal.

    Every signal field carries the same share of the teacher's logit variance, spread evenly
    over its ``r`` latent directions (``A_f`` is scaled to unit variance per coordinate), so
    a field at dim ``d`` keeps about ``min(d, r) / r`` of it; noise fields keep nothing. The
    multiple-choice knapsack (:func:`autodim.budget.knapsack_dims`) maximises the sum.
    """
    from autodim.budget import knapsack_dims

    cands = candidate_dims or list(range(D + 1))
    values = {n: [min(c, ranks[n]) / ranks[n] if ranks[n] else 0.0 for c in cands]
              for n in schema.names}
    return knapsack_dims(schema, D, cands, values, budget_bytes)


def bayes_auc(split: Split) -> float:
    """AUC of the teacher's own probabilities on a split (the ceiling for any model)."""
    from autodim.metrics import auc_numpy

    if split.probs is None:
        raise DataError("split has no teacher probabilities")
    return auc_numpy(split.labels, split.probs)


def make_planted(preset: str = "planted", *, rows: int | None = None, seed: int = 0,
                 **overrides: Any) -> CTRData:
    """Generate a planted dataset.

    Args:
        preset: ``"planted"`` (default, 10 fields, 4 of them noise), ``"decoupled"`` (9
            fields: signal in the 4 largest, noise in the 5 small and medium ones), ``"tiny"``
            (tests) or ``"criteo_kaggle"`` (Criteo Kaggle's 26 cardinalities, 33.7M ids).
        rows: Total rows (default: the preset's).
        seed: Seed of everything (teacher, ids, labels).
        **overrides: Any :class:`PlantedConfig` attribute, e.g. ``cardinalities=[...]``,
            ``ranks=[...]`` and ``zipf=[...]`` (one per field) for a layout of your own.

    Returns:
        :class:`CTRData` whose ``meta`` holds ``planted_ranks``, ``bayes_auc`` (test split)
        and the config; every split carries the teacher's ``probs``.

    Example:
        >>> data = make_planted("tiny", rows=2000, seed=1)
        >>> data.schema.names[:3], data.meta["planted_ranks"]["f00"]
        (['f00', 'f01', 'f02'], 2)
    """
    if preset not in PRESETS:
        raise DataError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
    bad = set(overrides) - set(PlantedConfig.__dataclass_fields__)
    if bad:
        raise DataError(f"unknown synthetic option(s) {sorted(bad)}; valid: "
                        f"{sorted(PlantedConfig.__dataclass_fields__)}")
    cfg = replace(PRESETS[preset], seed=seed, **overrides)
    if rows is not None:
        cfg = replace(cfg, rows=int(rows))
    teacher = _Teacher(cfg)
    F = len(cfg.cardinalities)
    id_dtype = np.int32 if max(cfg.cardinalities) < 2**31 - 1 else np.int64
    ids = np.empty((cfg.rows, F), dtype=id_dtype)
    labels = np.empty(cfg.rows, dtype=np.float32)
    probs = np.empty(cfg.rows, dtype=np.float32)
    for start in range(0, cfg.rows, cfg.chunk_rows):
        stop = min(cfg.rows, start + cfg.chunk_rows)
        rng = np.random.default_rng([cfg.seed, 11, start])
        chunk = np.stack([teacher.draw_ids(rng, f, stop - start) for f in range(F)], axis=1)
        if start == 0:
            teacher.calibrate(chunk[: min(len(chunk), 200_000)])
        p = 1.0 / (1.0 + np.exp(-teacher.logits(chunk)))
        ids[start:stop] = chunk
        probs[start:stop] = p
        labels[start:stop] = (rng.random(stop - start) < p).astype(np.float32)
    n_train = int(round(cfg.split[0] * cfg.rows))
    n_val = int(round(cfg.split[1] * cfg.rows))
    cuts = [(0, n_train), (n_train, n_train + n_val), (n_train + n_val, cfg.rows)]
    splits = [Split(ids[a:b], labels[a:b], probs[a:b]) for a, b in cuts]
    names = cfg.field_names
    train_ids = splits[0].ids
    fields = []
    for f, (name, n) in enumerate(zip(names, cfg.cardinalities)):
        freqs = np.bincount(train_ids[:, f], minlength=n + 1).astype(np.int64)
        fields.append(Field(name, "categorical", n + 1, 1, freqs))
    cfg_dict = {k: v for k, v in asdict(cfg).items() if k != "chunk_rows"}
    meta: dict[str, Any] = {
        "source": f"synthetic:{preset}", "planted_ranks": dict(zip(names, cfg.ranks)),
        "config": cfg_dict,
    }
    schema = Schema(fields, label="label", meta=meta)
    data = CTRData(schema, *splits, meta=dict(meta))
    data.meta["bayes_auc"] = bayes_auc(data.test)
    schema.meta["bayes_auc"] = data.meta["bayes_auc"]
    return data
