"""Reviewers in a real Label Studio: the review queue pushed as pre-filled tasks (least confident first, each
document once), and corrections submitted through Label Studio's API pulled by `invoice_feedback` (as Airflow
runs it) into the results database and the next data version, malformed or partial ones rejected with their
reason while the rest goes through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from airflow_runs import airflow_env, dags_test, make_project, run, task_states
from PIL import Image
from test_feedback import TRUTH, dataset_less_one, sha_of

from training import results, review
from training.data import read_split
from training.processing import ProcessingConfig, review_task
from training.review import LabelStudio, ReviewConfig

pytestmark = pytest.mark.slow
REVIEWER = "reviewer@invoices.local"  # the admin user tests/services.py starts Label Studio with


def connect(label_studio: tuple[str, str, Path], title: str) -> LabelStudio:
    url, token, document_root = label_studio
    return LabelStudio(ReviewConfig(url, token, title, document_root))


def queue(config: ProcessingConfig, engine, sha: str, page: Image.Image, fields: dict, least: float) -> None:
    """A document the processing DAG sent to review, read with confidence 0.95 but `least` on its total."""
    (config.folder("pages") / sha).mkdir()
    page.save(config.folder("pages") / sha / "page-001.png")
    results.receive(engine, sha, f"{sha[:8]}.pdf", str(config.root / "documents" / f"{sha}.pdf"), "run-1")
    results.update(
        engine,
        sha,
        status="review",
        fields=fields,
        confidence={**dict.fromkeys(fields, 0.95), "total": least},
        reason=f"total read with confidence {least}",
        model_name="invoice-extractor",
        model_version="3",
        pages=1,
    )
    task = review_task(config, results.fetch(engine, [sha])[0])
    (config.folder("review") / f"{sha}.json").write_text(json.dumps(task))


def fields_of(result: list[dict]) -> dict[str, str]:
    return {r["from_name"]: r["value"]["text"][0] for r in result}


def test_the_queue_is_pushed_least_confident_first_with_predictions_and_never_twice(label_studio, tmp_path):
    config = ProcessingConfig(
        root=tmp_path / "processing", inbox=tmp_path / "inbox", service_url="", api_key=""
    )
    engine = results.connect(f"sqlite:///{tmp_path / 'results.db'}")
    page = Image.new("RGB", (600, 800), "white")
    confidence = {sha_of("sure"): 0.7, sha_of("unsure"): 0.1, sha_of("middling"): 0.4}
    for sha, least in confidence.items():
        queue(config, engine, sha, page, {**TRUTH, "total": "1910.00"}, least)
    client = connect(label_studio, "queue test")

    assert review.push(client, config) == {"pushed": 3, "present": 0}
    project = client.project(config.root)
    tasks = sorted(client.tasks(project), key=lambda task: task["id"])
    assert [task["data"]["doc_id"] for task in tasks] == sorted(confidence, key=confidence.get)
    for (
        task
    ) in tasks:  # the model's reading, per field, with its confidence, as the reviewer's starting point
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "invoice-extractor/3"
        assert fields_of(prediction["result"])["total"] == "1910.00"
        assert fields_of(prediction["result"])["invoice_date"] == TRUTH["invoice_date"]
        assert "Consulting | 8 | 100.00 | 800.00" in fields_of(prediction["result"])["line_items"]
        scores = {r["from_name"]: r["score"] for r in prediction["result"]}
        assert scores["total"] == confidence[task["data"]["doc_id"]] and scores["vendor_name"] == 0.95
        assert task["data"]["confidence"] == confidence[task["data"]["doc_id"]]
    # The reviewer's browser gets the page image through Label Studio.
    image = client.http.get(tasks[0]["data"]["image"])
    assert (
        image.status_code == 200
        and image.content
        == (config.root / "pages" / tasks[0]["data"]["doc_id"] / "page-001.png").read_bytes()
    )
    (view,) = client.call("GET", "/api/dm/views", params={"project": project})
    assert view["data"]["ordering"] == ["tasks:data.confidence"]

    # Again: nothing is pushed twice; a new document joins the queue alone; the project is found, not remade.
    assert review.push(client, config) == {"pushed": 0, "present": 3}
    queue(config, engine, sha_of("late"), page, TRUTH, 0.3)
    assert review.push(client, config) == {"pushed": 1, "present": 3}
    assert sorted(t["data"]["doc_id"] for t in client.tasks(project)) == sorted([*confidence, sha_of("late")])
    titles = [p["title"] for p in client.call("GET", "/api/projects", params={"page_size": 1000})["results"]]
    assert titles.count("queue test") == 1

    summary = review.summary(client.tasks(project))
    assert (summary["tasks"], summary["queue"], summary["reviewed"], summary["corrections"]) == (4, 4, 0, {})


def annotate(client: LabelStudio, task: dict, changes: dict[str, str | None]) -> dict:
    """Submit the reviewer's annotation through Label Studio's API: the pre-filled values, with `changes`
    typed over them (None clears a field)."""
    result = [
        {**r, "value": {"text": [changes.get(r["from_name"], r["value"]["text"][0])]}}
        for r in task["predictions"][0]["result"]
        if changes.get(r["from_name"], "") is not None
    ]
    for r in result:
        r.pop("score", None)
    return client.call("POST", f"/api/tasks/{task['id']}/annotations", json={"result": result})


def test_corrections_made_in_label_studio_reach_the_results_and_the_next_data_version(
    label_studio, generated, tmp_path, airflow_home
):
    dataset, invoice, page = dataset_less_one(generated, tmp_path / "dataset")
    title = "feedback test"
    root = make_project(
        tmp_path / "project", dataset, {"dags": {"retries": 0}, "review": {"project_title": title}}
    )
    config = ProcessingConfig(
        root=root / "var" / "processing", inbox=root / "inbox", service_url="", api_key=""
    )
    engine = results.connect(results.default_url(root))
    truth = invoice.gt_parse
    good, partial, malformed = sha_of("good"), sha_of("partial"), sha_of("malformed")
    for sha, least in ((good, 0.2), (partial, 0.3), (malformed, 0.4)):
        queue(config, engine, sha, page, {**truth, "total": "0.00"}, least)
    client = connect(label_studio, title)
    review.push(client, config)
    tasks = {task["data"]["doc_id"]: task for task in client.tasks(client.project(config.root))}
    annotate(client, tasks[good], {"total": truth["total"]})
    annotate(client, tasks[partial], {"total": truth["total"], "invoice_date": None})
    annotate(client, tasks[malformed], {"total": truth["total"], "line_items": "two chairs, 40 each"})

    url, token, document_root = label_studio
    env = airflow_env(
        airflow_home,
        root,
        LABEL_STUDIO_URL=url,
        LABEL_STUDIO_API_KEY=token,
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
    )
    version = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    state, log = dags_test(env, "invoice_feedback")
    assert state == "success" and set(task_states(env, "invoice_feedback").values()) == {"success"}, log[
        -6000:
    ]

    # The correction wins in the results database, with who made it and when; the rejected stay in review.
    rows = {row["sha256"]: row for row in results.fetch(engine)}
    assert (rows[good]["status"], rows[good]["fields"], rows[good]["reviewed_by"]) == (
        "stored",
        truth,
        REVIEWER,
    )
    assert rows[good]["reviewed_at"] is not None
    assert rows[partial]["status"] == rows[malformed]["status"] == "review"
    # ... and is labeled data in a new, pushed data version.
    records = {r.doc_id: r for r in read_split(root / "data" / "train")}
    assert records[good].gt_parse == truth and partial not in records and malformed not in records
    new_version = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    assert new_version != version
    assert json.loads(run("dvc", "status", "--cloud", "--json", cwd=root)) == {}
    # The rejected annotations are listed with a reason a reviewer can act on; nothing else is lost.
    (listing,) = (config.root / "feedback" / "rejected").glob("*.rejected.json")
    reasons = {r["doc_id"]: r["reason"] for r in json.loads(listing.read_text())["rejected"]}
    assert reasons == {
        partial: "required fields missing: invoice_date",
        malformed: "line item row 'two chairs, 40 each' needs 4 cells: description | quantity | unit_price | amount",
    }
    assert list((config.root / "feedback" / "inbox").iterdir()) == []
    assert review.push(client, config)["pushed"] == 0  # the documents still in review are already tasks

    # Nothing new in Label Studio: the next run pulls nothing and changes nothing.
    state, log = dags_test(env, "invoice_feedback")
    states = task_states(env, "invoice_feedback")
    assert (
        state == "success"
        and states.pop("pull_corrections") == states.pop("collect_corrections") == "success"
    )
    assert set(states.values()) == {"skipped"}, (states, log[-6000:])
    assert yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"] == new_version

    # The reviewer fixes the partial annotation in Label Studio: the next run takes it.
    task = next(t for t in client.tasks(client.project(config.root)) if t["data"]["doc_id"] == partial)
    (fixed,) = task["annotations"]
    date = {"from_name": "invoice_date", "to_name": "image", "type": "textarea"}
    dated = [*fixed["result"], {**date, "value": {"text": [truth["invoice_date"]]}}]
    client.call("PATCH", f"/api/annotations/{fixed['id']}", json={"result": dated})
    state, log = dags_test(env, "invoice_feedback")
    assert state == "success", log[-6000:]
    assert results.fetch(engine, [partial])[0]["status"] == "stored"
    assert partial in {r.doc_id for r in read_split(root / "data" / "train")}
