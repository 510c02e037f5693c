"""Backbones that consume ``Tensor[B, F, D]``."""

from autodim.models.backbones import (BACKBONES, DCNv2, DeepFM, FM, LR, create_backbone,
                                      fm_interaction, list_backbones)

__all__ = ["LR", "FM", "DeepFM", "DCNv2", "BACKBONES", "create_backbone", "list_backbones",
           "fm_interaction"]
