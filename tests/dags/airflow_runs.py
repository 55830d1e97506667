"""Real Airflow for the DAG tests: `airflow dags test` runs of the repository's DAG files in Airflow's own
environment (the tests themselves run in the ML environment), and what they left in its database."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = REPO_ROOT / ".venvs" / "airflow" / "bin"


def airflow_env(home: Path, project: Path, **extra: str) -> dict[str, str]:
    """The environment of an Airflow command on `home`, with the DAGs working in `project`."""
    # Nothing of a `make up` Airflow (make exports its settings) may leak into the test's own.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "PATH": f"{AIRFLOW_BIN}{os.pathsep}{os.environ['PATH']}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "INVOICE_PROJECT_ROOT": str(project),
        "INVOICE_PARAMS": str(project / "params.yaml"),
        "INVOICE_ML_BIN": str(REPO_ROOT / ".venvs" / "ml" / "bin"),
        **extra,
    }
    env.pop("VIRTUAL_ENV", None)
    return env


def migrate(home: Path) -> Path:
    """Create (or upgrade) the SQLite metadata database of the Airflow home `home`; returns `home`."""
    result = subprocess.run(
        [str(AIRFLOW_BIN / "airflow"), "db", "migrate"],
        env=airflow_env(home, REPO_ROOT),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return home


def dags_test(
    env: dict[str, str], dag_id: str, conf: dict | None = None, timeout: int = 900
) -> tuple[str, str]:
    """`airflow dags test` one run of `dag_id`; returns (the run's final state, the log)."""
    command = [str(AIRFLOW_BIN / "airflow"), "dags", "test", dag_id]
    if conf:
        command += ["-c", json.dumps(conf)]
    result = subprocess.run(
        command, env=env, cwd=env["INVOICE_PROJECT_ROOT"], capture_output=True, text=True, timeout=timeout
    )
    log = result.stdout + result.stderr
    # the whole log stays beside the metadata database (failures print only its tail)
    runs = len(list(Path(env["AIRFLOW_HOME"]).glob(f"{dag_id}-*.log")))
    (Path(env["AIRFLOW_HOME"]) / f"{dag_id}-{runs + 1}.log").write_text(log)
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        row = db.execute(
            "select state from dag_run where dag_id = ? order by id desc limit 1", (dag_id,)
        ).fetchone()
    return (row[0] if row else "missing"), log


def task_states(env: dict[str, str], dag_id: str) -> dict[str, str]:
    """task_id[map_index] -> state of the latest run of `dag_id`."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        run_id = db.execute(
            "select run_id from dag_run where dag_id = ? order by id desc limit 1", (dag_id,)
        ).fetchone()[0]
        rows = db.execute(
            "select task_id, map_index, state from task_instance where dag_id = ? and run_id = ?",
            (dag_id, run_id),
        ).fetchall()
    return {f"{task}[{index}]" if index >= 0 else task: state for task, index, state in rows}


def asset_events(env: dict[str, str], name: str) -> int:
    """How many events the Asset `name` has received."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        return db.execute(
            "select count(*) from asset_event e join asset a on a.id = e.asset_id where a.name = ?", (name,)
        ).fetchone()[0]


def run(*args: str, cwd: Path) -> str:
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def make_project(root: Path, dataset: Path, params: dict) -> Path:
    """A project folder as the DAGs expect one: a git + DVC repository whose `data/` (a copy of `dataset`)
    is versioned and pushed to a folder remote, and a params.yaml (the repository's, updated by `params`)."""
    root.mkdir(parents=True)
    run("git", "init", "-q", cwd=root)
    run("dvc", "init", "-q", cwd=root)
    run("dvc", "remote", "add", "-d", "storage", str(root.parent / f"{root.name}-remote"), cwd=root)
    run("cp", "-r", str(dataset), str(root / "data"), cwd=root)
    run("dvc", "add", "-q", "data", cwd=root)
    run("dvc", "push", "-q", cwd=root)
    settings = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section, values in params.items():
        settings.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(settings))
    return root
