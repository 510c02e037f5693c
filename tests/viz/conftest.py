"""Fixtures of the figure tests: fake histories and a fake study (nothing trained)."""

from __future__ import annotations

import pytest
from fakes import fake_histories, make_fake_study


@pytest.fixture(scope="session")
def histories(tiny_data):
    return fake_histories(tiny_data.schema.names)


@pytest.fixture(scope="session")
def fake_study(tmp_path_factory):
    """``(StudyResult, data)`` of a fake study in a temp folder."""
    return make_fake_study(tmp_path_factory.mktemp("fake-study"))
