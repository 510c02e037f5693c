"""Backbones: every model consumes the embedding layer's ``Tensor[B, F, D]`` and returns logits.

First-order terms are read off the embeddings (a linear map over the flattened ``[B, F*D]``
input) instead of a separate per-id scalar table: a scalar table would be one more
full-vocabulary table outside the plan, and its bytes would escape the budget.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["LR", "FM", "DeepFM", "DCNv2", "BACKBONES", "create_backbone", "list_backbones"]


def _mlp(in_dim: int, hidden: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = h
    layers.append(nn.Linear(in_dim, 1))
    return nn.Sequential(*layers)


class LR(nn.Module):
    """Logistic regression over the flattened embeddings."""

    def __init__(self, num_fields: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(num_fields * dim, 1)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.linear(emb.flatten(1)).squeeze(-1)


def fm_interaction(emb: torch.Tensor) -> torch.Tensor:
    """Pairwise FM term, Rendle (2010) eq. 5: 0.5 * sum_k ((sum_f e_fk)^2 - sum_f e_fk^2)."""
    square_of_sum = emb.sum(1).pow(2)
    sum_of_square = emb.pow(2).sum(1)
    return 0.5 * (square_of_sum - sum_of_square).sum(-1)


class FM(nn.Module):
    """Factorisation machine: bias + first-order + pairwise interactions."""

    def __init__(self, num_fields: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(num_fields * dim, 1)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.linear(emb.flatten(1)).squeeze(-1) + fm_interaction(emb)


class DeepFM(nn.Module):
    """DeepFM (Guo et al., 2017): FM and an MLP over the same embeddings, logits summed."""

    def __init__(self, num_fields: int, dim: int, hidden: Sequence[int] = (64, 32),
                 dropout: float = 0.0):
        super().__init__()
        self.fm = FM(num_fields, dim)
        self.mlp = _mlp(num_fields * dim, hidden, dropout)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.fm(emb) + self.mlp(emb.flatten(1)).squeeze(-1)


class DCNv2(nn.Module):
    """DCN-V2 (Wang et al., 2021), stacked form: full-rank cross layers
    ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` (eq. 1) followed by an MLP."""

    def __init__(self, num_fields: int, dim: int, num_cross: int = 2,
                 hidden: Sequence[int] = (64, 32), dropout: float = 0.0):
        super().__init__()
        width = num_fields * dim
        self.cross = nn.ModuleList([nn.Linear(width, width) for _ in range(num_cross)])
        self.mlp = _mlp(width, hidden, dropout)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        x0 = x = emb.flatten(1)
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.mlp(x).squeeze(-1)


BACKBONES: dict[str, Callable[..., nn.Module]] = {"lr": LR, "fm": FM, "deepfm": DeepFM,
                                                  "dcnv2": DCNv2}


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def create_backbone(name: str, num_fields: int, dim: int, **kwargs) -> nn.Module:
    """Build a backbone by name (``lr``, ``fm``, ``deepfm``, ``dcnv2``)."""
    from autodim.errors import ConfigError

    try:
        cls = BACKBONES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; choose from {list_backbones()}") from None
    try:
        return cls(num_fields, dim, **kwargs)
    except (TypeError, ValueError) as exc:  # an unknown or ill-typed option: the user's input
        raise ConfigError(f"backbone {name!r}: bad backbone_kwargs {kwargs!r} "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                          ) from None
