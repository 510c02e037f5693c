"""LightningDataModule whose batches are slices of pre-built tensors (no per-row Python)."""

from __future__ import annotations

import warnings
from typing import Iterator

import lightning.pytorch as pl
import numpy as np
import torch

from autodim.data.dataset import CTRData, Split

__all__ = ["TensorBatches", "CTRDataModule", "BatchChunk", "BatchChunks"]


class TensorBatches:
    """Iterate ``(ids[B, T] int64, labels[B] float32)`` batches over one split.

    Shuffled splits draw a fresh permutation each epoch from ``seed + epoch`` so that a run
    is reproducible; each batch is one fancy-index gather, never a Python loop over rows.
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False) -> None:
        with warnings.catch_warnings():
            # Memory-mapped caches are read-only; batches only ever read (gather) from them.
            warnings.simplefilter("ignore", UserWarning)
            self.ids = torch.from_numpy(np.ascontiguousarray(split.ids))
        self.labels = torch.from_numpy(np.ascontiguousarray(split.labels, dtype=np.float32))
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = None
        self.epoch += 1
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min(n, (b + 1) * self.batch_size)
            if order is None:
                yield self.ids[lo:hi].long(), self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                yield self.ids[idx].long(), self.labels[idx]


class BatchChunk(list):
    """Consecutive training batches handed to one Lightning step (see :class:`BatchChunks`)."""


class BatchChunks:
    """A training loader's batches in groups of ``k`` (the last group may hold fewer), each a
    :class:`BatchChunk`; :meth:`autodim.task.CTRTask.training_step` takes one optimiser step
    per batch of a group, in order, so training is what it is batch by batch, with
    Lightning's per-batch work done once per group."""

    def __init__(self, loader, k: int) -> None:
        self.loader, self.k = loader, int(k)

    def __len__(self) -> int:
        return -(-len(self.loader) // self.k)

    def __iter__(self) -> Iterator[BatchChunk]:
        chunk = BatchChunk()
        for batch in self.loader:
            chunk.append(batch)
            if len(chunk) == self.k:
                yield chunk
                chunk = BatchChunk()
        if chunk:
            yield chunk


class CTRDataModule(pl.LightningDataModule):
    """Serves a :class:`CTRData` to Lightning.

    Args:
        data: The encoded dataset.
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (defaults to 4 x ``batch_size``).
        seed: Seed of the per-epoch shuffling.
    """

    def __init__(self, data: CTRData, *, batch_size: int = 1024,
                 eval_batch_size: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 4 * batch_size
        self.seed = seed
        self._loaders: dict[str, TensorBatches] = {}

    def reseed(self, seed: int) -> None:
        """Restart the shuffling from ``seed`` (fresh loaders, epoch 0): two runs with the
        same seed on one datamodule see the same batches."""
        self.seed = seed
        self._loaders.clear()

    @property
    def schema(self):
        return self.data.schema

    def _loader(self, name: str) -> TensorBatches:
        if name not in self._loaders:
            split = getattr(self.data, name)
            train = name == "train"
            self._loaders[name] = TensorBatches(
                split, self.batch_size if train else self.eval_batch_size,
                shuffle=train, seed=self.seed)
        return self._loaders[name]

    def train_dataloader(self) -> TensorBatches:
        return self._loader("train")

    def val_dataloader(self) -> TensorBatches:
        return self._loader("val")

    def test_dataloader(self) -> TensorBatches:
        return self._loader("test")

    def predict_dataloader(self) -> TensorBatches:
        return self._loader("test")
