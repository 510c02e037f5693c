"""Moved to :mod:`autodim.compress` (the compressor lives beside the plan); re-exported here
so existing imports keep working."""

from autodim.compress import collision_loss, compact_plan, memcom_candidates

__all__ = ["collision_loss", "memcom_candidates", "compact_plan"]
