"""Encoded data in memory (or memory-mapped): an id matrix per split plus labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autodim._io import atomic_save_npy, atomic_write_json
from autodim.data.schema import Schema
from autodim.errors import DataError

__all__ = ["Split", "CTRData", "check_sanity", "random_split_indices"]


@dataclass
class Split:
    """One split: ``ids`` is ``int[N, T]`` (T = schema.num_columns), ``labels`` is ``float32[N]``.

    ``probs`` holds the teacher's click probabilities for planted synthetic data (the Bayes
    classifier), else ``None``.
    """

    ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.ids.ndim != 2:
            raise DataError(f"split ids must be 2-D, got shape {self.ids.shape}")
        if len(self.labels) != len(self.ids):
            raise DataError(f"split has {len(self.ids)} rows but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "Split":
        return Split(self.ids[index], self.labels[index],
                     None if self.probs is None else self.probs[index])


@dataclass
class CTRData:
    """A dataset ready for training: schema (fitted on train) and three splits."""

    schema: Schema
    train: Split
    val: Split
    test: Split
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            s = getattr(self, name)
            if s.ids.shape[1] != self.schema.num_columns:
                raise DataError(f"{name} split has {s.ids.shape[1]} id columns, schema expects "
                                f"{self.schema.num_columns}")

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def save(self, folder: str | Path) -> None:
        """Write the cache: ``<split>_ids.npy``, labels, probs, schema; ``meta.json`` last.

        ``meta.json`` is the completion marker: a cache without it is ignored, so a kill
        mid-write never leaves a cache that looks complete.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / "meta.json"
        if marker.exists():
            marker.unlink()
        for name, s in self.splits().items():
            atomic_save_npy(folder / f"{name}_ids.npy", s.ids)
            atomic_save_npy(folder / f"{name}_labels.npy", s.labels)
            if s.probs is not None:
                atomic_save_npy(folder / f"{name}_probs.npy", s.probs)
        self.schema.save(folder)
        atomic_write_json(marker, self.meta)

    @classmethod
    def load(cls, folder: str | Path, *, mmap: bool = True) -> "CTRData":
        import json

        folder = Path(folder)
        if not (folder / "meta.json").exists():
            raise DataError(f"{folder}: not a complete autodim data cache (no meta.json)")
        schema = Schema.load(folder)
        mode = "r" if mmap else None
        splits = {}
        for name in ("train", "val", "test"):
            probs_path = folder / f"{name}_probs.npy"
            splits[name] = Split(
                np.load(folder / f"{name}_ids.npy", mmap_mode=mode),
                np.load(folder / f"{name}_labels.npy"),
                np.load(probs_path) if probs_path.exists() else None,
            )
        meta = json.loads((folder / "meta.json").read_text())
        data = cls(schema=schema, meta=meta, **splits)
        data.validate(str(folder))
        return data

    def validate(self, where: str) -> None:
        """Check labels are 0/1 and every id lies in its field's vocabulary (``DataError``
        naming the split and field otherwise): what a corrupted cache breaks first."""
        vocab = np.concatenate([np.full(f.width, f.vocab_size) for f in self.schema.fields])
        for name, s in self.splits().items():
            labels = np.asarray(s.labels)
            bad = ~np.isin(labels, (0.0, 1.0))
            if bad.any():
                raise DataError(f"{where}: {name} labels must be 0/1; row {int(np.argmax(bad))} "
                                f"has {labels[bad][0]!r}")
            if len(s) == 0:
                continue
            ids = np.asarray(s.ids)
            lo, hi = ids.min(axis=0), ids.max(axis=0)
            out = np.flatnonzero((lo < 0) | (hi >= vocab))
            if len(out):
                col = int(out[0])
                f = self.schema.fields[int(np.searchsorted(
                    np.cumsum([x.width for x in self.schema.fields]), col, side="right"))]
                raise DataError(f"{where}: {name} ids of field {f.name!r} span "
                                f"[{int(lo[col])}, {int(hi[col])}], outside its vocabulary "
                                f"[0, {f.vocab_size})")


def check_sanity(data: CTRData, where: str) -> None:
    """Refuse data no model can learn (``DataError`` naming ``where`` and the split or
    field): an empty train split, training labels of one class, a field whose every
    training id is out of vocabulary. An empty or single-class val/test split only warns
    (its AUC is undefined)."""
    import warnings

    if len(data.train) == 0:
        raise DataError(f"{where}: the train split has no rows")
    for name in ("val", "test"):  # legitimate when only inspecting the encoding
        if len(getattr(data, name)) == 0:
            warnings.warn(f"{where}: the {name} split has no rows: nothing to stop on or "
                          f"report", stacklevel=3)
    pos = {name: float(np.asarray(s.labels).mean()) if len(s) else 0.5
           for name, s in data.splits().items()}
    if pos["train"] in (0.0, 1.0):
        raise DataError(f"{where}: every training label is {int(pos['train'])}; a click model "
                        f"needs both classes")
    for name in ("val", "test"):
        if pos[name] in (0.0, 1.0):
            warnings.warn(f"{where}: every {name} label is {int(pos[name])}: its AUC is "
                          f"undefined", stacklevel=3)
    for f in data.schema.fields:
        if f.vocab_size <= 1 or (f.freqs is not None and f.freqs[1:].sum() == 0):
            raise DataError(f"{where}: field {f.name!r}: every training value is out of "
                            f"vocabulary (is min_count too high?); drop the field or lower it")


def random_split_indices(n: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded random train/val/test row indices (default 8:1:1)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, "
                        f"got {fractions}")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return (np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_val]),
            np.sort(perm[n_train + n_val:]))
