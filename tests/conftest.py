"""Shared fixtures: small planted datasets the tests make themselves."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

os.environ.setdefault("AUTODIM_CACHE", os.path.join(os.path.dirname(__file__), ".."
                                                    , ".pytest_cache", "autodim-cache"))
warnings.filterwarnings("ignore", ".*does not have many workers.*")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_data():
    """5 fields (3 signal of ranks 2/4/8, 2 noise), 6000 rows."""
    from autodim.data.synthetic import make_planted

    return make_planted("tiny", rows=6000, seed=0)


@pytest.fixture()
def tiny_dm(tiny_data):
    from autodim.data.datamodule import CTRDataModule

    return CTRDataModule(tiny_data, batch_size=256)
