"""One real SQLite MLflow store per test session (creating one runs migrations: seconds)."""

from __future__ import annotations

import pytest

from tests.reports.report_builders import Store, build_store


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return build_store(tmp_path_factory.mktemp("ukd-sweep"))
