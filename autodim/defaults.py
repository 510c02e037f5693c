"""Defaults shared by the API, study files and the CLI (torch-free, so every layer may import).

One value each: a default that differs between ``TrainConfig``, a study file and a CLI flag
makes the same run give different results depending on how it was started.
"""

from __future__ import annotations

#: Adam's learning rate for training and retraining (the benchmarks were tuned with it on
#: planted data and MovieLens-100K).
DEFAULT_LR = 3e-3
