"""Data: schemas, encoded splits, loaders for real files, the cache and synthetic data.

Data flow: a source (:func:`load_data`) -> per-field encoders fitted on train
(:mod:`~autodim.data.encode`) -> :class:`CTRData` (cached on disk) -> :class:`CTRDataModule`.

Names that pull in heavy dependencies (Lightning for the data module, the synthetic
generator) are imported on first use so that ``import autodim.data`` stays fast.
"""

from __future__ import annotations

from autodim._lazy import lazy_attributes
from autodim.data.criteo import load_criteo
from autodim.data.dataset import CTRData, Split, random_split_indices
from autodim.data.encode import (
    CategoricalEncoder,
    FieldSpec,
    SequenceEncoder,
    encode_frame,
    fit_encoders,
    load_encoders,
    save_encoders,
)
from autodim.data.recbole import load_recbole
from autodim.data.schema import Field, Schema
from autodim.data.sources import load_data
from autodim.data.tabular import load_table

__all__ = [
    "CTRData",
    "CTRDataModule",
    "CategoricalEncoder",
    "Field",
    "FieldSpec",
    "Schema",
    "SequenceEncoder",
    "Split",
    "TensorBatches",
    "encode_frame",
    "fit_encoders",
    "load_criteo",
    "load_data",
    "load_encoders",
    "load_recbole",
    "load_table",
    "make_planted",
    "random_split_indices",
    "save_encoders",
]

_LAZY = {
    "CTRDataModule": "autodim.data.datamodule",
    "TensorBatches": "autodim.data.datamodule",
    "make_planted": "autodim.data.synthetic",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__, globals())
