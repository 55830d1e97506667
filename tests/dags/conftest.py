"""Fixtures of the DAG tests: one migrated Airflow metadata database per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow_runs import migrate


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    """An Airflow home whose SQLite metadata database is migrated once per session."""
    return migrate(tmp_path_factory.mktemp("airflow-home"))
