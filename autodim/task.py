"""Training: ``CTRTask`` (a LightningModule) and :func:`train_plan`, which trains the compact
model a plan describes and reports test AUC, logloss, bytes and compression."""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from autodim.data.datamodule import CTRDataModule
from autodim.errors import AutodimError
from autodim.models import create_backbone

__all__ = ["TrainConfig", "TrainResult", "CTRTask", "TrainingDiverged", "train_plan",
           "make_trainer", "evaluate", "split_parameters", "make_optimizers", "Distill"]


class TrainingDiverged(AutodimError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Settings of one training run (keyword-only, stored verbatim in plan provenance)."""

    max_epochs: int = 10
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2
    seed: int = 0
    accelerator: str = "cpu"
    max_steps: int = -1
    limit_train_batches: int | float = 1.0
    restore_best: bool = True
    progress: bool = False
    sparse_threshold: int = 1_000_000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_parameters(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(dense, sparse) parameters; sparse ones belong to ``nn.Embedding(sparse=True)``."""
    sparse_ids = {id(m.weight) for m in module.modules()
                  if isinstance(m, nn.Embedding) and m.sparse}
    dense, sparse = [], []
    for p in module.parameters():
        if p.requires_grad:
            (sparse if id(p) in sparse_ids else dense).append(p)
    return dense, sparse


def make_optimizers(module: nn.Module, lr: float, weight_decay: float = 0.0
                    ) -> list[torch.optim.Optimizer]:
    """Adam for dense parameters; row-wise SparseAdam for tables with sparse gradients (a
    dense Adam step over a 33M-row table would touch every row on every step)."""
    dense, sparse = split_parameters(module)
    opts: list[torch.optim.Optimizer] = []
    if dense:
        opts.append(torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay))
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=lr))
    return opts


def logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(nn.functional.binary_cross_entropy_with_logits(logits, labels))


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
             ) -> dict[str, float]:
    """AUC and logloss of ``model(ids) -> logits`` over the batches (model put in eval mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    for x, y in batches:
        logits.append(model(x.to(device)).float().cpu())
        labels.append(y)
    model.train(was_training)
    lg, lb = torch.cat(logits), torch.cat(labels)
    return {"auc": float(binary_auroc(torch.sigmoid(lg), lb.long())), "logloss": logloss(lg, lb)}


class CTRTask(pl.LightningModule):
    """Embedding layer + backbone, trained with BCE.

    Manual optimisation: dense parameters step with Adam, sparse-gradient tables with
    SparseAdam, both every step. Validation/test log ``{stage}_auc`` and ``{stage}_logloss``.

    Args:
        embedding: Any layer mapping ``ids[B, T] -> [B, F, D]`` with ``num_bytes()``.
        backbone: A module mapping ``[B, F, D] -> logits[B]``.
        lr, weight_decay: Optimiser settings.
    """

    def __init__(self, embedding: nn.Module, backbone: nn.Module, *, lr: float = 1e-3,
                 weight_decay: float = 0.0):
        super().__init__()
        self.embedding, self.backbone = embedding, backbone
        self.lr, self.weight_decay = lr, weight_decay
        self.automatic_optimization = False
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.embedding(ids))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels)

    def distill_loss(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Knowledge distillation (Hinton et al. 2015) for a binary output, when a
        :class:`Distill` callback set a teacher: weight x T^2 x BCE towards the teacher's
        tempered probability (T^2 keeps the gradient's size); 0 otherwise."""
        distill = getattr(self, "distill", None)
        if distill is None:
            return logits.new_zeros(())
        teacher, weight, T = distill
        with torch.no_grad():
            target = torch.sigmoid(teacher(ids) / T)
        soft = nn.functional.binary_cross_entropy_with_logits(logits / T, target)
        return weight * T * T * soft

    def configure_optimizers(self):
        return make_optimizers(self, self.lr, self.weight_decay)

    def training_step(self, batch, batch_idx):
        ids, labels = batch
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        for o in opts:
            o.zero_grad()
        logits = self(ids)
        loss = self.loss(logits, labels) + self.distill_loss(logits, ids)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"training loss became {loss.item()} at epoch "
                                   f"{self.current_epoch}, step {self.global_step}")
        self.manual_backward(loss)
        # Lightning counts every LightningOptimizer.step() as a global step; step the extra
        # (sparse) optimisers through their raw optimizer so that one batch = one step and
        # max_steps means what it says.
        opts[0].step()
        for o in opts[1:]:
            o.optimizer.step()
        return loss.detach()

    def _eval_step(self, stage: str, batch) -> None:
        ids, labels = batch
        self._outputs.setdefault(stage, []).append((self(ids).detach().float(), labels))

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def _eval_end(self, stage: str) -> None:
        outs = self._outputs.pop(stage, [])
        if not outs:
            return
        lg = torch.cat([o[0] for o in outs])
        lb = torch.cat([o[1] for o in outs]).to(lg.device)
        auc = binary_auroc(torch.sigmoid(lg), lb.long())
        self.log(f"{stage}_auc", auc, prog_bar=True)
        self.log(f"{stage}_logloss", logloss(lg, lb))

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def num_bytes(self) -> int:
        return self.embedding.num_bytes()


class RestoreBest(Callback):
    """Keep the weights of the best ``val_auc`` epoch in memory; restore them after fit."""

    def __init__(self) -> None:
        self.best = -math.inf
        self.state: dict[str, torch.Tensor] | None = None
        self.best_epoch = -1

    def on_validation_end(self, trainer, pl_module) -> None:
        auc = trainer.callback_metrics.get("val_auc")
        if auc is not None and float(auc) > self.best:
            self.best, self.best_epoch = float(auc), trainer.current_epoch
            self.state = copy.deepcopy(pl_module.state_dict())

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.state is not None:
            pl_module.load_state_dict(self.state)


class Distill(Callback):
    """Train towards a teacher's probabilities as well as the labels
    (``CTRTask.distill_loss``):
    ``loss = BCE(y) + weight * T^2 * BCE(sigmoid(teacher / T))``. The teacher stays frozen
    and is not part of the student's weights."""

    def __init__(self, teacher: nn.Module, *, weight: float = 1.0, temperature: float = 1.0):
        self.teacher, self.weight, self.temperature = teacher.eval(), weight, temperature

    def on_fit_start(self, trainer, pl_module) -> None:
        # A plain attribute, not a submodule: kept out of the state dict and the optimiser.
        object.__setattr__(pl_module, "distill", (self.teacher, self.weight, self.temperature))

    def on_fit_end(self, trainer, pl_module) -> None:
        object.__setattr__(pl_module, "distill", None)


def make_trainer(config: TrainConfig, callbacks: list[Callback] | None = None,
                 **overrides: Any) -> pl.Trainer:
    """A quiet, deterministic Trainer (no logger, no checkpoint files, no sanity steps)."""
    # Lightning announces devices and tips at INFO level on every Trainer; a search builds
    # many Trainers, so keep its log to warnings.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")  # lightning vs torch 2.13 pytree
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # in-memory batches
    kwargs: dict[str, Any] = dict(
        max_epochs=config.max_epochs, max_steps=config.max_steps,
        accelerator=config.accelerator, devices=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=config.progress, num_sanity_val_steps=0,
        deterministic="warn", callbacks=callbacks or [],
    )
    if config.limit_train_batches != 1.0:
        kwargs["limit_train_batches"] = config.limit_train_batches
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


@dataclass
class TrainResult:
    """What one training run produced: the trained task and its metrics."""

    task: CTRTask
    metrics: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    pl.seed_everything(seed, workers=False, verbose=False)


def train_plan(plan, datamodule: CTRDataModule, *, backbone: str = "fm",
               backbone_kwargs: dict[str, Any] | None = None,
               config: TrainConfig | None = None, embedding: nn.Module | None = None,
               test: bool = True, callbacks: Iterable[Callback] = ()) -> TrainResult:
    """Train the compact model a plan describes, with early stopping on validation AUC.

    Args:
        plan: A :class:`~autodim.plan.DimensionPlan` (checked against the data's schema).
        datamodule: The data.
        backbone: Backbone name (see :func:`autodim.models.list_backbones`).
        config: Training settings; ``config.seed`` seeds initialisation and shuffling.
        embedding: A pre-built (e.g. warm-started) embedding to use instead of building one.
        test: Also evaluate on the test split.
        callbacks: Extra Lightning callbacks (e.g. a study's rule that stops hopeless runs).

    Returns:
        :class:`TrainResult` with ``val_auc``, ``val_logloss``, ``test_auc``,
        ``test_logloss``, ``num_bytes``, ``compression``, ``epochs``, ``train_seconds``,
        ``samples_per_s``.
    """
    config = config or TrainConfig()
    plan.check_schema(datamodule.schema)
    seed_everything(config.seed)
    datamodule.reseed(config.seed)
    emb = embedding
    if emb is None:
        emb = plan.build(sparse_threshold=config.sparse_threshold)
    model = create_backbone(backbone, plan.schema().num_fields, plan.D, **(backbone_kwargs or {}))
    task = CTRTask(emb, model, lr=config.lr, weight_decay=config.weight_decay)
    best = RestoreBest()
    # strict=False: a run shorter than one epoch (max_steps) never validates; that is not an
    # error, the final evaluation below still measures it.
    all_callbacks: list[Callback] = [EarlyStopping("val_auc", mode="max",
                                                   patience=config.patience, strict=False)]
    if config.restore_best:
        all_callbacks.append(best)
    all_callbacks.extend(callbacks)
    trainer = make_trainer(config, all_callbacks)
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    seconds = time.perf_counter() - t0
    metrics: dict[str, float] = {"val_auc": best.best if config.restore_best else
                                 float(trainer.callback_metrics.get("val_auc", math.nan))}
    steps = trainer.global_step
    metrics["epochs"] = trainer.current_epoch
    metrics["train_seconds"] = seconds
    metrics["samples_per_s"] = steps * datamodule.batch_size / max(seconds, 1e-9)
    val = evaluate(task, datamodule.val_dataloader())
    metrics["val_auc"], metrics["val_logloss"] = val["auc"], val["logloss"]
    if test:
        t = evaluate(task, datamodule.test_dataloader())
        metrics["test_auc"], metrics["test_logloss"] = t["auc"], t["logloss"]
    metrics["num_bytes"] = task.num_bytes()
    metrics["compression"] = plan.full_bytes() / max(1, metrics["num_bytes"])
    return TrainResult(task=task, metrics=metrics)
