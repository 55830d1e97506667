"""Fixtures of the DAG tests: one migrated Airflow metadata database per session."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from airflow_runs import AIRFLOW_BIN, REPO_ROOT, airflow_env


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory) -> Path:
    """An Airflow home whose SQLite metadata database is migrated once per session."""
    home = tmp_path_factory.mktemp("airflow-home")
    result = subprocess.run(
        [str(AIRFLOW_BIN / "airflow"), "db", "migrate"],
        env=airflow_env(home, REPO_ROOT),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return home
