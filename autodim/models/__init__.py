"""Backbones that consume ``Tensor[B, F, D]``."""

from autodim.models.backbones import (
                                      BACKBONES,
                                      FM,
                                      LR,
                                      DCNv2,
                                      DeepFM,
                                      create_backbone,
                                      fm_interaction,
                                      list_backbones,
)

__all__ = ["LR", "FM", "DeepFM", "DCNv2", "BACKBONES", "create_backbone", "list_backbones",
           "fm_interaction"]
