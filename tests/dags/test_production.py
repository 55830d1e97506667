"""The production profile against the machine's real services: MLflow on PostgreSQL (runs, registry, aliases)
and the processing DAG under the CeleryExecutor with two workers, PostgreSQL for Airflow's metadata and the
results, Redis as broker, and a two-worker BentoML service: 200 invoices stored exactly once, also when one
Celery worker is killed in the middle of the run."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from airflow_runs import (
    TRAIN,
    celery_env,
    empty_broker,
    make_project,
    memorisable_dataset,
    metadata_query,
    run_state,
    start_cluster,
    trigger,
)
from PIL import Image, PngImagePlugin
from services import postgres_database, start_bentoml, start_mlflow, stop, wait_ready

from training import results
from training.data import read_split

pytestmark = pytest.mark.slow

INVOICES = 200
# 20 batches: enough mapped tasks that both workers hold some when one of them is killed.
PROCESS = dict(docs_per_task=10, concurrency=4, http_retries=2, backoff_s=0.5, timeout_s=300)
DAGS = dict(retries=2, retry_delay_s=1, processing_schedule=None)
WORKERS = {"worker-1": "default,ml", "worker-2": "default"}


@pytest.fixture(scope="module")
def databases():
    """Three fresh PostgreSQL databases, as the profile keeps them apart: Airflow, MLflow, results."""
    with (
        postgres_database("invoice_test_airflow") as airflow,
        postgres_database("invoice_test_mlflow") as mlflow_db,
        postgres_database("invoice_test_results") as results_db,
    ):
        yield {"airflow": airflow, "mlflow": mlflow_db, "results": results_db}


@pytest.fixture(scope="module")
def mlflow_postgres(databases, tmp_path_factory):
    process, url = start_mlflow(tmp_path_factory.mktemp("mlflow-pg"), databases["mlflow"])
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = url
    # this process's MLflow (tracking and registry) too: an earlier module's server may still be set in it
    from training.tracking import use_tracking

    use_tracking()
    yield url
    os.environ.pop("MLFLOW_TRACKING_URI") if previous is None else os.environ.update(
        MLFLOW_TRACKING_URI=previous
    )
    stop(process)


@pytest.fixture(scope="module")
def project(tmp_path_factory, handful) -> Path:
    return make_project(
        tmp_path_factory.mktemp("production") / "project",
        memorisable_dataset(handful, tmp_path_factory.mktemp("memorisable")),
        {"train": TRAIN, "process": PROCESS, "dags": DAGS},
    )


@pytest.fixture(scope="module")
def trained(project, mlflow_postgres) -> dict:
    """`invoice model train` tracked in the PostgreSQL-backed MLflow: its JSON summary."""
    environment = {
        **os.environ,
        "INVOICE_PROJECT_ROOT": str(project),
        "INVOICE_PARAMS": str(project / "params.yaml"),
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "invoice"), "model", "train"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_mlflow_on_postgresql_keeps_runs_registry_and_aliases(trained, mlflow_postgres, databases, tmp_path):
    import mlflow
    from training import registry

    client = mlflow.MlflowClient(mlflow_postgres, registry_uri=mlflow_postgres)
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["preset"] == "tiny" and "final_f1" in run.data.metrics
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == trained["steps"]
    version = trained["registered_version"]
    assert client.get_model_version(registry.MODEL_NAME, version).run_id == run.info.run_id

    second = mlflow.register_model(f"runs:/{run.info.run_id}/model", registry.MODEL_NAME).version
    registry.set_alias("champion", registry.resolve(second))
    assert registry.by_alias("champion").version == second
    registry.set_alias("champion", registry.resolve(version))
    assert registry.by_alias("champion").version == version
    assert (registry.download(registry.by_alias("champion"), tmp_path) / "model.safetensors").exists()

    # it is all in PostgreSQL, not in some local fallback store
    engine = sa.create_engine(databases["mlflow"])
    with engine.connect() as connection:
        aliases = dict(
            connection.execute(sa.text("select alias, version from registered_model_aliases")).all()
        )
        runs = connection.execute(sa.text("select count(*) from runs")).scalar_one()
    engine.dispose()
    assert aliases == {"challenger": int(version), "champion": int(version)} and runs >= 1


@pytest.fixture(scope="module")
def service(trained, mlflow_postgres, tmp_path_factory):
    """The champion served by `bentoml serve` with two workers, from the PostgreSQL-backed registry."""
    from training import registry

    registry.set_alias("champion", registry.resolve(trained["registered_version"]))
    process, url, _log = start_bentoml(
        tmp_path_factory.mktemp("bento-pg"),
        mlflow_postgres,
        INVOICE_WORKERS="2",
        INVOICE_MAX_LATENCY_MS="30000",
    )
    wait_ready(url, seconds=180)
    yield url
    stop(process)


def deliver_variants(handful: Path, inbox: Path, n: int) -> dict[str, str]:
    """`n` distinct files (their bytes differ by a PNG text chunk) of the four memorised pages; returns each
    file's expected total."""
    inbox.mkdir(parents=True, exist_ok=True)
    records = read_split(handful / "test")
    expected = {}
    for index in range(n):
        record = records[index % len(records)]
        info = PngImagePlugin.PngInfo()
        info.add_text("delivery", str(index))
        name = f"invoice-{index:03d}.png"
        Image.open(handful / "test" / record.file_name).save(
            inbox / f".{name}.part", format="PNG", pnginfo=info
        )
        (inbox / f".{name}.part").rename(inbox / name)
        expected[name] = record.gt_parse["total"]
    return expected


def test_processing_dag_under_celery_stores_every_invoice_once_when_a_worker_dies(
    project, handful, service, mlflow_postgres, databases, tmp_path
):
    expected = deliver_variants(handful, project / "var" / "processing" / "inbox", INVOICES)
    env = celery_env(
        tmp_path / "airflow",
        project,
        databases["airflow"],
        empty_broker(1 + secrets.randbelow(15)),
        INVOICE_SERVICE_URL=service,
        INVOICE_RESULTS_URL=databases["results"],
        MLFLOW_TRACKING_URI=mlflow_postgres,
    )
    cluster = start_cluster(env, WORKERS)
    try:
        trigger(cluster, "invoice_processing", "celery-run")

        ran_on: dict[str, set[str]] = {name: set() for name in WORKERS}
        killed: list[tuple[str, int]] = []

        def finished_or_kill():
            running = metadata_query(
                databases["airflow"],
                "select task_id, map_index, pid from task_instance where run_id = 'celery-run'"
                " and state = 'running' and pid is not null",
            )
            for name in WORKERS:
                if name in cluster.processes and cluster.processes[name].poll() is None:
                    mine = cluster.descendants(name)
                    ran_on[name] |= {f"{task}[{index}]" for task, index, pid in running if pid in mine}
            if not killed and ran_on["worker-1"]:
                on_two = [
                    (task, index)
                    for task, index, pid in running
                    if task in ("extract", "render") and pid in cluster.descendants("worker-2")
                ]
                if on_two:
                    killed.extend(on_two)
                    cluster.kill("worker-2")
            return run_state(cluster, "celery-run")

        state = cluster.wait_until(finished_or_kill, "the processing run finished", seconds=1500)
    finally:
        cluster.stop()

    tries = {
        (task, index): (state_, try_number)
        for task, index, state_, try_number in metadata_query(
            databases["airflow"],
            "select task_id, map_index, state, try_number from task_instance where run_id = 'celery-run'",
        )
    }
    assert state == "success", tries
    assert killed, f"worker-2 never held a render or extract task to kill: {ran_on}"
    assert ran_on["worker-1"] and ran_on["worker-2"], ran_on
    for task in killed:
        assert tries[task][0] == "success" and tries[task][1] >= 2, (task, tries[task])

    engine = results.connect(databases["results"])
    rows = results.fetch(engine)
    engine.dispose()
    assert len(rows) == INVOICES and {r["status"] for r in rows} == {"stored"}
    assert sum(r["duplicates"] for r in rows) == 0
    assert {r["file_name"]: r["fields"]["total"] for r in rows} == expected
    exported = json.loads(
        (project / "var" / "processing" / "exports" / "celery-run" / "invoices.json").read_text()
    )
    assert len(exported) == INVOICES and len({record["sha256"] for record in exported}) == INVOICES
    assert not list((project / "var" / "processing" / "inbox").iterdir())
