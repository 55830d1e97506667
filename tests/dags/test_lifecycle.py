"""The training and processing DAGs end to end, as Airflow runs them (`airflow dags test`), against a real
MLflow server and a real `bentoml serve`: a tiny model memorises four invoices through `invoice_training`,
becomes the champion the service loads, and `invoice_processing` sorts an inbox of good, duplicate and broken
files into stored / review / quarantine, exactly once each (pushing the review queue to a real Label Studio),
also when the service is down for a run; a new customer's folder is bootstrapped into Label Studio pre-filled."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import requests
from airflow_runs import (
    TRAIN,
    airflow_env,
    asset_events,
    dags_test,
    make_project,
    memorisable_dataset,
    task_states,
)
from PIL import Image
from services import free_port, start_bentoml, stop, wait_ready

from training import results, review
from training.data import read_split
from training.processing import ProcessingConfig
from training.review import LabelStudio, ReviewConfig

pytestmark = pytest.mark.slow

PROCESS = dict(docs_per_task=3, concurrency=4, http_retries=1, backoff_s=0.2, timeout_s=120)
DAGS = dict(retries=1, retry_delay_s=1)
REVIEW_PROJECT = "lifecycle review"


@pytest.fixture(scope="module")
def project(tmp_path_factory, handful) -> Path:
    return make_project(
        tmp_path_factory.mktemp("lifecycle") / "project",
        memorisable_dataset(handful, tmp_path_factory.mktemp("memorisable")),
        {"train": TRAIN, "process": PROCESS, "dags": DAGS, "review": {"project_title": REVIEW_PROJECT}},
    )


@pytest.fixture(scope="module")
def service(mlflow_server, tmp_path_factory):
    process, url, _log = start_bentoml(
        tmp_path_factory.mktemp("bento"),
        mlflow_server,
        INVOICE_MODEL_POLL_S="2",
        INVOICE_MAX_LATENCY_MS="10000",
    )
    yield url
    stop(process)


@pytest.fixture(scope="module")
def env(airflow_home, project, mlflow_server, service, label_studio):
    url, token, document_root = label_studio
    return airflow_env(
        airflow_home,
        project,
        MLFLOW_TRACKING_URI=mlflow_server,
        INVOICE_SERVICE_URL=service,
        LABEL_STUDIO_URL=url,
        LABEL_STUDIO_API_KEY=token,
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
    )


@pytest.fixture(scope="module")
def reviewers(label_studio, project) -> tuple[LabelStudio, int]:
    """The lifecycle project's review project in Label Studio: (client, project id)."""
    url, token, document_root = label_studio
    client = LabelStudio(ReviewConfig(url, token, REVIEW_PROJECT, document_root))
    return client, client.project(project / "var" / "processing")


def queued(reviewers: tuple[LabelStudio, int]) -> list[str]:
    """The documents (sha256) among the review project's tasks, one entry per task."""
    client, project_id = reviewers
    return sorted(task["data"]["doc_id"] for task in client.tasks(project_id))


@pytest.fixture(scope="module")
def trained(env):
    """One `invoice_training` run: (state, log, champion_model events before, after)."""
    before = asset_events(env, "champion_model")
    state, log = dags_test(env, "invoice_training", {"max_steps": 400})
    return state, log, before, asset_events(env, "champion_model")


def test_training_dag_promotes_a_champion_that_the_service_loads(trained, env, project, service):
    from training.registry import by_alias
    from training.versioning import data_version

    state, log, events_before, events_after = trained
    assert state == "success", log[-6000:]
    tasks = task_states(env, "invoice_training")
    for name in ("validate", "version", "train", "gate", "promoted", "reload_service"):
        assert tasks[name] == "success", tasks
    assert tasks["announce"] == "skipped", "the data it was given had been versioned already"
    champion = by_alias("champion")
    assert champion is not None
    wait_ready(service)
    assert requests.post(f"{service}/model", timeout=10).json()["model"]["version"] == champion.version
    assert events_after == events_before + 1
    import mlflow

    run = mlflow.MlflowClient().get_run(champion.run_id)
    assert run.data.params["data_version"] == data_version(project / "data.dvc")["md5"]
    tags = mlflow.MlflowClient().get_model_version("invoice-extractor", champion.version).tags
    assert tags["gate.decision"] == "promoted"


def results_db(project: Path):
    """The results database the DAGs wrote for `project` (SQLite default under its var/)."""
    return results.connect(results.default_url(project))


def inbox_batch(handful: Path, inbox: Path) -> dict[str, dict]:
    """Good documents in three formats, a duplicate, broken and unsupported files, and a half-written upload.
    Returns the expected label of each good file."""
    inbox.mkdir(parents=True, exist_ok=True)
    records = read_split(handful / "test")
    images = [handful / "test" / r.file_name for r in records]
    expected = {}
    for record, image in zip(records[:2], images[:2], strict=True):
        shutil.copy(image, inbox / image.name)
        expected[image.name] = record.gt_parse
    Image.open(images[2]).save(inbox / "scan.pdf", resolution=120)
    expected["scan.pdf"] = records[2].gt_parse
    Image.open(images[3]).convert("RGB").save(inbox / "photo.jpg", quality=95)
    expected["photo.jpg"] = records[3].gt_parse
    shutil.copy(
        images[0], inbox / "z-resent-copy.png"
    )  # after its original: the inbox is taken in name order
    (inbox / "truncated.png").write_bytes(images[1].read_bytes()[:300])
    (inbox / "empty.pdf").write_bytes(b"")
    (inbox / "notes.txt").write_text("not an invoice")
    (inbox / "upload.png.part").write_bytes(b"still being written")
    return expected


def deliver(delivery: Path, inbox: Path) -> None:
    """Copy the delivery into the inbox (byte for byte: PIL stamps a new PDF with the time it was written)."""
    inbox.mkdir(parents=True, exist_ok=True)
    for path in delivery.iterdir():
        shutil.copy(path, inbox / path.name)


def test_processing_dag_sorts_every_file_exactly_once(trained, env, project, handful, reviewers):
    assert trained[0] == "success", "needs the champion of the training DAG"
    root = project / "var" / "processing"
    delivery = project.parent / "delivery"
    expected = inbox_batch(handful, delivery)
    deliver(delivery, root / "inbox")

    state, log = dags_test(env, "invoice_processing")
    assert state == "success", log[-6000:]
    engine = results_db(project)
    rows = {row["file_name"]: row for row in results.fetch(engine)}
    # Seven distinct documents; the re-sent copy counted on its original, the half-written upload left alone.
    assert len(rows) == 7 and "z-resent-copy.png" not in rows
    assert sum(row["duplicates"] for row in rows.values()) == 1
    assert (root / "inbox" / "upload.png.part").exists() and len(list((root / "inbox").iterdir())) == 1
    assert {row["status"] for row in rows.values()} <= set(results.FINAL_STATES)
    reasons = {
        name: rows[name]["reason"].split(":")[0] for name in ("truncated.png", "empty.pdf", "notes.txt")
    }
    assert reasons == {
        "truncated.png": "corrupt_image",
        "empty.pdf": "empty",
        "notes.txt": "unsupported_type",
    }
    assert all(rows[name]["status"] == "quarantine" for name in reasons)
    assert len(list((root / "quarantine").glob("*.reason.json"))) == 3
    # The memorised invoices come back read correctly, with their lineage.
    originals = [name for name in expected if name.endswith(".png")]
    for name in originals:
        row = rows[name]
        assert row["status"] == "stored", row
        for field in ("invoice_number", "invoice_date", "total", "vendor_name"):
            assert row["fields"][field] == expected[name][field]
        assert row["model_version"] and row["model_run_id"] and row["data_version"]
    assert rows["scan.pdf"]["pages"] == 1
    stored = [row for row in rows.values() if row["status"] == "stored"]
    review = [row for row in rows.values() if row["status"] == "review"]
    assert len(stored) + len(review) == 4
    # Accounting export of this run and one Label Studio task per reviewed document.
    (export,) = (root / "exports").iterdir()
    with (export / "invoices.csv").open() as handle:
        exported = list(csv.DictReader(handle))
    assert sorted(r["sha256"] for r in exported) == sorted(r["sha256"] for r in stored)
    assert len(json.loads((export / "invoices.json").read_text())) == len(stored)
    tasks = {p.stem for p in (root / "review").glob("*.json")}
    assert tasks == {row["sha256"] for row in review}
    assert task_states(env, "invoice_processing")["push_reviews"] == "success"
    assert queued(reviewers) == sorted(tasks)  # the review queue is in Label Studio, once

    # The same files delivered again: nothing new is stored, each delivery is counted.
    deliver(delivery, root / "inbox")
    state, log = dags_test(env, "invoice_processing")
    assert state == "success", log[-6000:]
    again = {row["file_name"]: row for row in results.fetch(engine)}
    assert {k: v["status"] for k, v in again.items()} == {k: v["status"] for k, v in rows.items()}
    assert sum(row["duplicates"] for row in again.values()) == 1 + 8
    assert queued(reviewers) == sorted(tasks)


def test_service_down_leaves_documents_retryable_and_the_next_run_finishes_them(
    trained, env, project, handful
):
    assert trained[0] == "success"
    root = project / "var" / "processing"
    inbox = root / "inbox"
    fresh = []
    for index, image in enumerate(sorted((handful / "test").glob("*.png"))[:2]):
        target = inbox / f"late-{index}.jpg"
        Image.open(image).convert("RGB").save(target, quality=85)  # new bytes, new documents
        fresh.append(target.name)
    down = {**env, "INVOICE_SERVICE_URL": f"http://127.0.0.1:{free_port()}"}
    state, log = dags_test(down, "invoice_processing")
    assert state == "failed"
    tasks = task_states(down, "invoice_processing")
    assert any(name.startswith("extract") and s == "failed" for name, s in tasks.items()), tasks
    assert "no answer after 2 attempts" in log  # each page: the client's own retry with backoff
    assert (
        log.count("stay pending for the retry") >= 2
    )  # then Airflow's retry of the task, then the run fails
    engine = results_db(project)
    rows = {row["file_name"]: row for row in results.fetch(engine) if row["file_name"] in fresh}
    assert {row["status"] for row in rows.values()} == {"pending"}
    assert all(Path(row["path"]).exists() for row in rows.values())

    state, log = dags_test(env, "invoice_processing")  # service back
    assert state == "success", log[-6000:]
    rows = {row["file_name"]: row for row in results.fetch(engine) if row["file_name"] in fresh}
    assert {row["status"] for row in rows.values()} <= {"stored", "review"} and len(rows) == 2


def test_a_new_customers_folder_is_queued_for_review_pre_filled_by_the_champion(
    trained, project, handful, service, reviewers
):
    assert trained[0] == "success"
    folder = project.parent / "new-customer"
    folder.mkdir()
    records = read_split(handful / "test")[:2]
    for index, record in enumerate(records):  # new bytes of pages the champion knows
        Image.open(handful / "test" / record.file_name).convert("RGB").save(
            folder / f"first-{index}.jpg", quality=90
        )
    config = ProcessingConfig(
        root=project / "var" / "processing",
        inbox=project / "inbox",
        service_url=service,
        api_key="",
        **PROCESS,
    )
    client, project_id = reviewers
    before = set(queued(reviewers))

    counts = review.bootstrap(client, config, results_db(project), folder, "bootstrap__test")
    assert (counts["files"], counts["review"], counts["stored"], counts["pushed"]) == (2, 2, 0, 2), counts
    new = [t for t in client.tasks(project_id) if t["data"]["doc_id"] not in before]
    assert len(new) == 2
    for task in new:  # pre-filled with the champion's reading: reviewers correct instead of typing
        record = records[int(task["data"]["file_name"].split("-")[1][0])]
        (prediction,) = task["predictions"]
        values = {r["from_name"]: r["value"]["text"][0] for r in prediction["result"]}
        assert values["total"] == record.gt_parse["total"], values
        assert prediction["model_version"].startswith("invoice-extractor/")
        assert "bootstrap: label by correcting" in task["data"]["reasons"]
    assert {p.name for p in folder.iterdir()} == {"first-0.jpg", "first-1.jpg"}  # the customer's files stay

    again = review.bootstrap(client, config, results_db(project), folder, "bootstrap__again")
    assert (again["review"], again["pushed"]) == (0, 0) and len(queued(reviewers)) == len(before) + 2
