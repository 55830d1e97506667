"""DAG integrity: every file in dags/ parses in Airflow's own environment without errors, quickly, without the
ML stack, and yields exactly the platform's DAGs, documented, tagged, with an owner and retries on every task.

The tests run in the ML environment, which has no Airflow, so a probe script runs in `.venvs/airflow` on a
throwaway AIRFLOW_HOME: a DagBag over the folder, then each DAG file imported on its own in a fresh interpreter
(Airflow already imported, as in the dag-processor) to time it and see which heavy modules it pulls in. Run by
hand against another folder: `.venvs/airflow/bin/python <probe> <dag folder> <out.json>` (the probe is PROBE).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_PYTHON = REPO_ROOT / ".venvs" / "airflow" / "bin" / "python"
DAGS = REPO_ROOT / "dags"

EXPECTED_DAG_IDS = {"invoice_training", "invoice_processing", "invoice_feedback"}
MAX_IMPORT_S = 2.0
# Never at parse time: the dag-processor would load the ML stack for every parse of every file.
FORBIDDEN = ("torch", "transformers", "mlflow", "bentoml", "evidently", "great_expectations")
# Tolerated only where Airflow itself already loads them (unavoidable); a DAG file must not bring them in.
AVOIDABLE = ("pandas", "sklearn")

pytestmark = pytest.mark.slow

PROBE = r'''
"""DAG-integrity probe, run in Airflow's environment: `python probe.py <dag folder> <out.json>`."""
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "mlflow", "bentoml", "evidently", "great_expectations", "sklearn", "pandas")


def import_file(path: Path) -> None:
    """Import one DAG file in this (fresh) interpreter; print the time and the heavy modules loaded."""
    import airflow.sdk  # noqa: F401  (loaded before any DAG file, as in the dag-processor)

    before = set(sys.modules)
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"integrity_probe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    start = time.perf_counter()
    spec.loader.exec_module(module)
    seconds = time.perf_counter() - start
    loaded = [name for name in HEAVY if name in sys.modules]
    print(json.dumps({
        "import_s": round(seconds, 3),
        "heavy_loaded": loaded,
        "heavy_by_file": [name for name in loaded if name not in before],
    }))


def main(folder: Path, out: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    # Examples stay out through AIRFLOW__CORE__LOAD_EXAMPLES=False (DagBag has no include_examples in 3.x).
    dagbag = DagBag(dag_folder=str(folder))
    files = {}
    for stat in dagbag.dagbag_stats:
        path = Path(folder, stat.file) if not Path(stat.file).is_absolute() else Path(stat.file)
        fresh = subprocess.run([sys.executable, __file__, "--import", str(path)], capture_output=True, text=True)
        entry = {"parse_s": round(stat.duration.total_seconds(), 3), "dags": stat.dags}
        if fresh.returncode == 0:
            entry.update(json.loads(fresh.stdout.strip().splitlines()[-1]))
        else:
            entry["import_error"] = fresh.stderr[-3000:]
        files[str(path.relative_to(folder))] = entry
    dags = {}
    for dag_id, dag in sorted(dagbag.dags.items()):
        dags[dag_id] = {
            "file": str(Path(dag.fileloc).relative_to(folder)),
            "tags": sorted(dag.tags or []),
            "doc_md": bool(dag.doc_md and dag.doc_md.strip()),
            "description": bool(dag.description and dag.description.strip()),
            "tasks": {
                task.task_id: {"owner": task.owner, "retries": task.retries, "queue": task.queue}
                for task in dag.tasks
            },
            # what the scheduler stores and runs: equal under every profile, or a profile changed a code path
            "serialized": DagSerialization.to_dict(dag),
        }
    report = {
        "import_errors": {str(file): error for file, error in dagbag.import_errors.items()},
        "dag_ids": sorted(dagbag.dag_ids),
        "files": files,
        "dags": dags,
    }
    Path(out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    if sys.argv[1] == "--import":
        import_file(Path(sys.argv[2]))
    else:
        main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]))
'''


def probe(folder: Path, work: Path, **settings: str) -> dict:
    """The probe's report on the DAG files in `folder`, with `work` as Airflow's home and the environment's
    `settings` (e.g. another profile's)."""
    script = work / "probe.py"
    script.write_text(PROBE)
    home = work / "airflow-home"
    home.mkdir()
    # Nothing of a surrounding Airflow (`make` exports var/airflow's settings) may leak in.
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        PATH=f"{AIRFLOW_PYTHON.parent}{os.pathsep}{os.environ['PATH']}",
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(folder),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        INVOICE_PROJECT_ROOT=str(REPO_ROOT),
        **settings,
    )
    out = work / "report.json"
    result = subprocess.run(
        [str(AIRFLOW_PYTHON), str(script), str(folder), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0 and out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    return probe(DAGS, tmp_path_factory.mktemp("integrity"))


def test_no_import_errors(report):
    assert report["import_errors"] == {}, "\n\n".join(
        f"{f}:\n{e}" for f, e in report["import_errors"].items()
    )
    failed = {
        file: entry["import_error"] for file, entry in report["files"].items() if "import_error" in entry
    }
    assert not failed, failed


def test_exactly_the_platform_dags(report):
    assert set(report["dag_ids"]) == EXPECTED_DAG_IDS


def test_each_dag_file_imports_in_under_two_seconds(report):
    slow = {
        file: entry for file, entry in report["files"].items() if entry.get("import_s", 0) >= MAX_IMPORT_S
    }
    assert not slow, f"DAG files taking {MAX_IMPORT_S} s or more to import: {slow}"


def test_no_heavy_modules_at_parse_time(report):
    offending = {}
    for file, entry in report["files"].items():
        heavy = [name for name in entry.get("heavy_loaded", []) if name in FORBIDDEN]
        heavy += [name for name in entry.get("heavy_by_file", []) if name in AVOIDABLE]
        if heavy:
            offending[file] = heavy
    assert not offending, f"modules a DAG file must not import at the top level: {offending}"


def test_every_task_has_an_owner_and_retries(report):
    bad = {
        f"{dag_id}.{task_id}": task
        for dag_id, dag in report["dags"].items()
        for task_id, task in dag["tasks"].items()
        if not task["owner"] or task["owner"] == "airflow" or (task["retries"] or 0) < 1
    }
    assert not bad, f"tasks without their own owner or without retries: {bad}"


def test_every_dag_is_tagged_and_documented(report):
    assert report["dags"], "no DAGs parsed"
    untagged = [dag_id for dag_id, dag in report["dags"].items() if not dag["tags"]]
    undocumented = [
        dag_id for dag_id, dag in report["dags"].items() if not (dag["doc_md"] or dag["description"])
    ]
    assert not untagged and not undocumented, (
        f"untagged: {untagged}, without doc_md or description: {undocumented}"
    )


def test_switching_profile_changes_no_code_path_in_the_dags(report, tmp_path):
    """Parsed with the production profile's settings (Makefile PROFILE=production), every DAG serializes exactly
    as with the embedded ones: the profile only changes where things run and are stored. The torch tasks are on
    the `ml` queue in both."""
    production = probe(
        DAGS,
        tmp_path,
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://postgres@127.0.0.1:5432/invoice_airflow",
        AIRFLOW__CELERY__BROKER_URL="redis://127.0.0.1:6379/0",
        INVOICE_RESULTS_URL="postgresql+psycopg2://postgres@127.0.0.1:5432/invoice_results",
        INVOICE_WORKERS="2",
    )
    assert production["dag_ids"] == report["dag_ids"]
    for dag_id in report["dag_ids"]:
        assert production["dags"][dag_id]["serialized"] == report["dags"][dag_id]["serialized"], dag_id
    queues = {task: spec["queue"] for task, spec in report["dags"]["invoice_training"]["tasks"].items()}
    assert queues["train"] == queues["gate"] == "ml"
    assert {queue for task, queue in queues.items() if task not in ("train", "gate")} == {"default"}
