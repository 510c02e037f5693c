"""Training: ``CTRTask`` (a LightningModule) and :func:`train_plan`, which trains the compact
model a plan describes and reports test AUC, logloss, bytes and compression."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import nn

from autodim.data.datamodule import BatchChunk, BatchChunks, CTRDataModule
from autodim.defaults import DEFAULT_LR
from autodim.embeddings.fused import FusedEmbedding, fusable
from autodim.errors import AutodimError, DataError
from autodim.metrics import auc_torch, single_class
from autodim.models import create_backbone

__all__ = ["TrainConfig", "TrainResult", "CTRTask", "TrainingDiverged", "train_plan",
           "make_trainer", "evaluate", "split_parameters", "make_optimizers", "adam", "RowWiseAdam",
           "RestoreBest", "release_optimizers", "Distill"]


class TrainingDiverged(AutodimError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Settings of one training run (keyword-only, stored verbatim in plan provenance)."""

    max_epochs: int = 10
    batch_size: int = 1024
    lr: float = DEFAULT_LR
    weight_decay: float = 0.0
    patience: int = 2
    seed: int = 0
    accelerator: str = "cpu"
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    max_steps: int = -1
    limit_train_batches: int | float = 1.0
    restore_best: bool = True
    progress: bool = False
    # Tables (fused tables: all fields of one width) above this many rows get sparse
    # gradients and a lazy row-wise optimiser. Measured crossover on one thread, batch 1024 x
    # 10 ids, D=16, train_plan samples/s, dense (fused Adam) vs row-wise: 24k rows 331k vs
    # 217k, 48k 254k vs 242k, 96k 220k vs 241k, 240k 129k vs 213k, so the crossover is
    # about 60k rows (it was 20-30k before dense Adam was fused); see
    # benchmarks/throughput.py for the vocabulary sweep.
    sparse_threshold: int = 60_000
    sparse_optimizer: str = "rowwise_adam"
    # train_plan hands this many consecutive batches to one Lightning training step, each
    # still its own optimiser step, in order (same result as 1): Lightning's per-batch work
    # (loop bookkeeping, hooks) is about 0.3 ms, 10-20 % of a MovieLens-100K FM step at
    # batch 1024 (benchmarks/throughput.py). Off (1) when a callback has per-batch hooks or
    # limit_train_batches is set.
    batches_per_call: int = 8

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


class RowWiseAdam(torch.optim.Optimizer):
    """Lazy partial row-wise Adam for tables with sparse gradients.

    FBGEMM's ``PARTIAL_ROWWISE_ADAM`` (the table-batched embedding optimiser of
    DLRM/TorchRec): a per-element first moment and ONE second moment per row (the mean of
    the row's squared gradient), so its state is ``rows x (dim + 1)`` numbers instead of
    Adam's ``2 x rows x dim`` (plus one int32 per row that finds a batch's repeated ids, see
    :func:`_touched_rows`). Lazy: a step touches only the rows in the batch, its cost
    depends on the batch, not on the vocabulary.

    The first moment is stored in ``moment_dtype`` (default bfloat16; the update itself is
    computed in float32), so table + state is about 1.62x the table instead of 2.06x (D=16)
    (our deviation from fbgemm, which keeps it in float32; ``moment_dtype=torch.float32``
    restores that). Measured side by side, planted data x10 / x100 (240k / 2.4M ids, 400k
    rows, FM, 3 seeds): test AUC 0.7539 / 0.7016 with either dtype, to four decimals.

    It differs from dense Adam in two ways, both on purpose: (1) rows absent from a batch
    keep their moments and do not move (dense Adam decays their moments and keeps moving
    them with the stale momentum); (2) the step size is shared by a row's columns. Bias
    correction uses the optimiser's global step, as ``torch.optim.SparseAdam`` does.
    ``benchmarks/throughput.py`` and the notes in ``README`` report the AUC it reaches.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, moment_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.moment_dtype = moment_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse:
                    raise RuntimeError("RowWiseAdam expects sparse gradients (nn.Embedding("
                                       "sparse=True)); use Adam for dense parameters")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.moment_dtype)
                    state["exp_avg_sq"] = p.new_zeros(p.shape[0])
                rows, values = _touched_rows(grad, state)
                state["step"] += 1
                t = state["step"]
                m = (state["exp_avg"].index_select(0, rows).float().mul_(b1)
                     .add_(values, alpha=1 - b1))
                v = (state["exp_avg_sq"].index_select(0, rows).mul_(b2)
                     .add_(values.pow(2).mean(1), alpha=1 - b2))
                state["exp_avg"].index_copy_(0, rows, m.to(self.moment_dtype))
                state["exp_avg_sq"].index_copy_(0, rows, v)
                denom = (v / (1 - b2 ** t)).sqrt_().add_(group["eps"])
                # The rows are unique, so read-update-write equals index_add_, which on a
                # large table costs several times more (2.4M x 16, ~9.7k rows: 0.96 ms
                # against 0.15 ms in a training step).
                p.index_copy_(0, rows, p.index_select(0, rows).add_(
                    m / denom.unsqueeze(1), alpha=-group["lr"] / (1 - b1 ** t)))
        return loss


def _touched_rows(grad: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows a sparse gradient touches, each once, and their summed gradients.

    ``coalesce()`` sorts the ids to find duplicates (0.7 ms of a 3.7 ms step for 10,240 ids
    into a 2.4M-row table). Instead each id writes its position into a per-row slot (kept
    in the optimiser state, 4 bytes a row) and reads the slot back: the positions that read
    themselves are one representative per row, whichever duplicate wrote last, and every
    id finds its representative's rank there. The rows come out in batch order, unsorted;
    the gradient tensor itself is left as autograd made it.
    """
    n = grad._nnz()
    if grad.is_coalesced() or n >= 2**31:  # (positions must fit the int32 slots)
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    ids, values = grad._indices()[0], grad._values()
    if "slot" not in state:
        state["slot"] = torch.zeros(grad.shape[0], dtype=torch.int32, device=ids.device)
    slot = state["slot"]
    pos = torch.arange(n, dtype=torch.int32, device=ids.device)
    slot.index_copy_(0, ids, pos)
    winner = slot.index_select(0, ids)
    first = winner == pos
    rank = torch.cumsum(first, 0) - 1  # a representative's index among the unique rows
    summed = values.new_zeros(int(first.sum()), *values.shape[1:])
    summed.index_add_(0, rank.index_select(0, winner.long()), values)
    return ids[first], summed


SPARSE_OPTIMIZERS = {"rowwise_adam": RowWiseAdam, "sparse_adam": torch.optim.SparseAdam}


def adam(params: Iterable[Any], **kwargs: Any) -> torch.optim.Adam:
    """``torch.optim.Adam``, fused where the parameters allow it (dense floating-point
    tensors on CPU or CUDA): one pass over each tensor per step instead of a kernel per
    term of the update. Measured on one thread: 0.52 ms against 2.59 ms for a 24,020 x 31
    table, 0.28 against 0.79 for 24,020 x 16. The update is Adam's; results differ from
    the unfused loop by float rounding only (~1e-7 after 100 steps)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # e.g. a device without the fused kernel
        return torch.optim.Adam(params, **kwargs)


def make_optimizers(module: nn.Module, lr: float, weight_decay: float = 0.0, *,
                    sparse_optimizer: str = "rowwise_adam") -> list[torch.optim.Optimizer]:
    """Adam for dense parameters; a lazy row-wise optimiser for tables with sparse gradients
    (a dense Adam step touches every row of a table on every step, so its cost grows with
    the vocabulary). ``sparse_optimizer``: ``rowwise_adam`` (:class:`RowWiseAdam`, the
    default) or ``sparse_adam`` (``torch.optim.SparseAdam``: per-element lazy moments,
    2x the table in state). Weight decay applies to the dense parameters only."""
    try:
        sparse_cls = SPARSE_OPTIMIZERS[sparse_optimizer]
    except KeyError:
        raise AutodimError(f"unknown sparse_optimizer {sparse_optimizer!r}; choose from "
                           f"{sorted(SPARSE_OPTIMIZERS)}") from None
    dense, sparse = split_parameters(module)
    opts: list[torch.optim.Optimizer] = []
    if dense:
        opts.append(adam(dense, lr=lr, weight_decay=weight_decay))
    if sparse:
        opts.append(sparse_cls(sparse, lr=lr))
    return opts


def release_optimizers(trainer: pl.Trainer) -> None:
    """Drop the optimisers and their state (Adam's moments are 1-2x the tables) once a fit
    is over; the trained weights stay."""
    for opt in trainer.strategy.optimizers:
        opt = getattr(opt, "optimizer", opt)
        opt.state.clear()
    trainer.strategy.optimizers = []


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
    return {"auc": float(auc_torch(torch.sigmoid(lg), lb)), "logloss": logloss(lg, lb)}


class CTRTask(pl.LightningModule):
    """Embedding layer + backbone, trained with BCE.

    Manual optimisation: dense parameters step with Adam, sparse-gradient tables with
    SparseAdam, both every step. Validation/test log ``{stage}_auc`` and ``{stage}_logloss``.

    Args:
        embedding: Any layer mapping ``ids[B, T] -> [B, F, D]`` with ``num_bytes()``.
        backbone: A module mapping ``[B, F, D] -> logits[B]``.
        lr, weight_decay: Optimiser settings.
    """

    def __init__(self, embedding: nn.Module, backbone: nn.Module, *, lr: float = DEFAULT_LR,
                 weight_decay: float = 0.0, sparse_optimizer: str = "rowwise_adam"):
        super().__init__()
        self.embedding, self.backbone = embedding, backbone
        self.lr, self.weight_decay = lr, weight_decay
        self.sparse_optimizer = sparse_optimizer
        self.automatic_optimization = False
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.embedding(ids))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels)

    def distill_loss(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor | None:
        """The distillation term while a :class:`Distill` callback is active, else None.

        Knowledge distillation (Hinton et al. 2015) for a binary output: BCE towards the
        teacher's tempered probability, scaled by T^2 so its gradient keeps its size. Kept
        apart from :meth:`loss` so that subclasses overriding ``loss(logits, labels)`` (the
        searchers' supernets) keep working.
        """
        distill = getattr(self, "distill", None)
        if distill is None:
            return None
        teacher, weight, T = distill
        with torch.no_grad():
            target = torch.sigmoid(teacher(ids) / T)
        soft = nn.functional.binary_cross_entropy_with_logits(logits / T, target)
        return weight * T * T * soft

    def configure_optimizers(self):
        return make_optimizers(self, self.lr, self.weight_decay,
                               sparse_optimizer=self.sparse_optimizer)

    def training_step(self, batch, batch_idx):
        if isinstance(batch, BatchChunk):
            # Several batches in one Lightning step (TrainConfig.batches_per_call): one
            # optimiser step each, as if handed over one by one; max_steps holds inside.
            loss, limit = None, self.trainer.max_steps
            for b in batch:
                if 0 <= limit <= self.trainer.global_step:
                    break
                loss = self._train_batch(b)
            return loss
        return self._train_batch(batch)

    def _train_batch(self, batch):
        ids, labels = batch
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        for o in opts:
            o.zero_grad()
        logits = self(ids)
        loss = self.loss(logits, labels)
        soft = self.distill_loss(logits, ids)
        if soft is not None:
            loss = loss + soft
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
        auc = auc_torch(torch.sigmoid(lg), lb)
        self.log(f"{stage}_auc", auc, prog_bar=True)
        self.log(f"{stage}_logloss", logloss(lg, lb))

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def num_bytes(self) -> int:
        return self.embedding.num_bytes()


class RestoreBest(Callback):
    """Restore the weights of the best ``val_auc`` epoch after fit.

    The best state goes to a temporary file (raw tensor bytes), not to a copy in RAM, and
    is read back straight into the parameters: memory stays at one copy of the model
    whatever the table sizes. The optimisers' state is released before the restore.
    """

    def __init__(self) -> None:
        self.best = -math.inf
        self.best_epoch = -1
        self.path: str | None = None
        self._layout: list[tuple[str, int]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        auc = trainer.callback_metrics.get("val_auc")
        if auc is not None and float(auc) > self.best:
            self.best, self.best_epoch = float(auc), trainer.current_epoch
            if self.path is None:
                fd, self.path = tempfile.mkstemp(prefix="autodim-best-", suffix=".bin")
                os.close(fd)
            self._layout = []
            with open(self.path, "wb") as fh:
                for key, t in pl_module.state_dict().items():
                    t = t.detach().cpu().contiguous()
                    _byte_view(t).numpy().tofile(fh)
                    self._layout.append((key, t.numel() * t.element_size()))

    def on_fit_end(self, trainer, pl_module) -> None:
        release_optimizers(trainer)
        if self.path is None:
            return
        try:
            state = pl_module.state_dict()
            with open(self.path, "rb") as fh:
                for key, nbytes in self._layout:
                    t = state[key]
                    if t.is_contiguous() and t.device.type == "cpu":
                        fh.readinto(memoryview(_byte_view(t).numpy()))  # in place, no copy
                    else:
                        buf = torch.empty(nbytes, dtype=torch.uint8)
                        fh.readinto(memoryview(buf.numpy()))
                        t.copy_(buf.view(t.dtype).view(t.shape))
        finally:
            self.close()

    def close(self) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None

    def __del__(self) -> None:
        self.close()


def _byte_view(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor sharing its memory."""
    return t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


class Distill(Callback):
    """Train towards a teacher's probabilities as well as the labels (see ``CTRTask.loss``):
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
    # Under DDP every rank evaluates the whole val/test split, so there is nothing to sync.
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    kwargs: dict[str, Any] = dict(
        max_epochs=config.max_epochs, max_steps=config.max_steps,
        accelerator=config.accelerator, devices=config.devices, strategy=config.strategy,
        logger=False,
        enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=config.progress, num_sanity_val_steps=0,
        deterministic="warn", callbacks=callbacks or [],
    )
    if config.limit_train_batches != 1.0:
        kwargs["limit_train_batches"] = config.limit_train_batches
    from autodim.progress import epoch_callback

    _INTERRUPT["seen"] = False  # a new run: an old Ctrl-C is not this one's
    shown = epoch_callback()  # epochs on the command line's progress display, if any
    kwargs["callbacks"] = [*kwargs["callbacks"], _SeesInterrupt(),
                           *([shown] if shown is not None else [])]
    kwargs.update(overrides)
    # Deterministic algorithms stay on; torch's companion setting that fills every new
    # uninitialised tensor with NaN (so that code reading such memory is reproducible) goes
    # off: nothing here reads memory it did not write, and the fill cost 5-15 % of a
    # training step (MovieLens-100K FM, batch 1024/4096, benchmarks/throughput.py).
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        return pl.Trainer(**kwargs)
    except (MisconfigurationException, ValueError, RuntimeError, ImportError) as exc:
        words = ("accelerator", "device", "strategy", "gpu", "cuda", "mps", "xla", "tpu")
        if not isinstance(exc, ImportError) and not any(w in str(exc).lower() for w in words):
            raise
        raise AutodimError(f"train: accelerator={config.accelerator!r}, devices="
                           f"{config.devices!r}, strategy={config.strategy!r}: "
                           f"{str(exc).splitlines()[0]}") from None


def _check_distributed(config: TrainConfig, embedding: nn.Module) -> None:
    """Sparse-gradient tables cannot be all-reduced by DDP: refuse them with the way out."""
    multi = config.devices not in (1, "1", [0]) and str(config.strategy).startswith("ddp")
    if multi and any(isinstance(m, nn.Embedding) and m.sparse for m in embedding.modules()):
        raise AutodimError(
            f"train: strategy {config.strategy!r} on devices={config.devices!r} cannot "
            f"train sparse-gradient tables (fields with more than {config.sparse_threshold:,} "
            "rows use them); raise TrainConfig.sparse_threshold or train on one device")


_INTERRUPT = {"seen": False}


def interrupted_by_user() -> bool:
    """Whether a Ctrl-C stopped a ``fit`` in this process (Lightning turns it into
    ``sys.exit(1)``; the command line then exits 130 with ``interrupted``)."""
    return _INTERRUPT["seen"]


class _SeesInterrupt(Callback):
    """Notes a Ctrl-C inside ``fit`` (every Trainer of :func:`make_trainer` has one)."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            import signal

            _INTERRUPT["seen"] = True
            # Lightning ignores SIGINT from here on (to shut down in peace): a second Ctrl-C
            # should still stop the process.
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _batch_hooks(callback: Callback) -> bool:
    """Whether ``callback`` acts on every training batch (then batches are not chunked)."""
    return any(getattr(type(callback), h) is not getattr(Callback, h)
               for h in ("on_train_batch_start", "on_train_batch_end"))


def _fit(trainer: pl.Trainer, task: CTRTask, datamodule, *, batches_per_call: int = 1
         ) -> None:
    """``trainer.fit`` with Ctrl-C raised as KeyboardInterrupt (so callers can exit 130 and
    record the trial as interrupted) instead of Lightning's silent exit code 1; with
    ``batches_per_call > 1`` the training batches come in :class:`BatchChunks`."""
    try:
        if batches_per_call > 1:
            trainer.fit(task, train_dataloaders=BatchChunks(datamodule.train_dataloader(),
                                                            batches_per_call),
                        val_dataloaders=datamodule.val_dataloader())
        else:
            trainer.fit(task, datamodule=datamodule)
    except SystemExit:
        if not _INTERRUPT["seen"]:
            raise
        raise KeyboardInterrupt from None


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
    for split in ("train", "val"):  # single-class labels: AUC undefined, nothing to learn
        one = single_class(getattr(datamodule.data, split).labels)
        if one is not None:
            raise DataError(f"{split} split: every label is {one:g}, so AUC is undefined and "
                            "there is nothing to learn (is the label column right?)")
    seed_everything(config.seed)
    datamodule.reseed(config.seed)
    emb = embedding
    if emb is None:
        emb = plan.build(sparse_threshold=config.sparse_threshold, fused=True)
    elif fusable(emb):  # e.g. a warm start: train it fused, hand back the per-field layer
        emb = FusedEmbedding(emb, sparse_threshold=config.sparse_threshold)
    model = create_backbone(backbone, plan.schema().num_fields, plan.D, **(backbone_kwargs or {}))
    task = CTRTask(emb, model, lr=config.lr, weight_decay=config.weight_decay,
                   sparse_optimizer=config.sparse_optimizer)
    best = RestoreBest()
    # strict=False: a run shorter than one epoch (max_steps) never validates; that is not an
    # error, the final evaluation below still measures it.
    all_callbacks: list[Callback] = [EarlyStopping("val_auc", mode="max",
                                                   patience=config.patience, strict=False)]
    if config.restore_best:
        all_callbacks.append(best)
    all_callbacks.extend(callbacks)
    chunk = config.batches_per_call
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise AutodimError(f"train: batches_per_call={chunk!r} must be an integer >= 1")
    _check_distributed(config, emb)
    trainer = make_trainer(config, all_callbacks)
    if config.limit_train_batches != 1.0 or any(_batch_hooks(c) for c in trainer.callbacks):
        chunk = 1
    t0 = time.perf_counter()
    _fit(trainer, task, datamodule, batches_per_call=chunk)
    seconds = time.perf_counter() - t0
    release_optimizers(trainer)
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
    if isinstance(task.embedding, FusedEmbedding):
        # Callers (searchers, export) read the per-field modules; they hold the trained
        # weights already (views of the fused tables), so this is no copy.
        task.embedding = task.embedding.fieldwise()
    metrics["num_bytes"] = task.num_bytes()
    metrics["compression"] = plan.full_bytes() / max(1, metrics["num_bytes"])
    return TrainResult(task=task, metrics=metrics)
