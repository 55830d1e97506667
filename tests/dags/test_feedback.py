"""Reviewers' corrections back into the data: training/feedback.py on its own, then the `invoice_feedback` DAG
as Airflow runs it (`airflow dags test`, Airflow's environment) on a real git + DVC project with a folder
remote, a results database with documents in review, and a Label Studio export with one good correction, one
malformed task and one partial annotation."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from airflow_runs import airflow_env, asset_events, dags_test, make_project, run, task_states
from PIL import Image

from training import results
from training.data import Record, read_split, write_split
from training.feedback import apply_corrections, collect, folder
from training.processing import ProcessingConfig, review_task

TRUTH = {
    "vendor_name": "Nordwerk GmbH",
    "vendor_address": "Hauptstraße 5, 10115 Berlin",
    "customer_name": "Anna Schmidt",
    "invoice_number": "RE-2026-0042",
    "invoice_date": "2026-02-04",
    "due_date": "2026-03-06",
    "currency": "EUR",
    "subtotal": "1000.00",
    "tax": "190.00",
    "total": "1190.00",
    "line_items": [
        {"description": "Consulting", "quantity": "8", "unit_price": "100.00", "amount": "800.00"},
        {"description": "Support plan", "quantity": "1", "unit_price": "200.00", "amount": "200.00"},
    ],
}


def textareas(label: dict) -> list[dict]:
    """A reviewer's annotation: one TextArea per field, as the review task's pre-annotation lays them out."""
    return [
        {
            "from_name": name,
            "to_name": "image",
            "type": "textarea",
            "value": {"text": [json.dumps(value) if name == "line_items" else value]},
        }
        for name, value in label.items()
        if value
    ]


def reviewed(task: dict, task_id: int, label: dict, reviewer: int = 3) -> dict:
    """The review task as Label Studio exports it once a reviewer submitted `label`."""
    annotation = {
        "id": task_id * 10,
        "completed_by": reviewer,
        "result": textareas(label),
        "was_cancelled": False,
        "created_at": "2026-03-02T09:00:00.000000Z",
        "updated_at": "2026-03-02T10:00:00.000000Z",
    }
    return {**task, "id": task_id, "annotations": [annotation]}


def in_review(
    config: ProcessingConfig, engine, sha: str, page: Image.Image, fields: dict, reason: str
) -> dict:
    """A document the processing DAG sent to review: its row, page image and Label Studio task."""
    pages = config.folder("pages") / sha
    pages.mkdir(parents=True, exist_ok=True)
    page.save(pages / "page-001.png")
    results.receive(
        engine, sha, f"{sha[:8]}.pdf", str(config.root / "documents" / f"{sha}.pdf"), "scheduled__1"
    )
    results.update(
        engine,
        sha,
        status="review",
        fields=fields,
        confidence=dict.fromkeys(fields, 0.9),
        reason=reason,
        checks=[reason],
        model_name="invoice-extractor",
        model_version="3",
        pages=1,
    )
    task = review_task(config, results.fetch(engine, [sha])[0])
    (config.folder("review") / f"{sha}.json").write_text(json.dumps(task))
    return task


def dataset_less_one(generated: Path, dataset: Path) -> tuple[Path, Record, Image.Image]:
    """A copy of the generated dataset without one train invoice: (the dataset, that invoice, its page), the
    invoice a reviewer then labels."""
    shutil.copytree(generated, dataset)
    train = read_split(dataset / "train")
    invoice = next(r for r in train if r.file_name.endswith(".png") and not r.meta.get("pdf"))
    page = Image.open(dataset / "train" / invoice.file_name)
    page.load()
    (dataset / "train" / invoice.file_name).unlink()
    write_split(dataset / "train", [r for r in train if r is not invoice])
    return dataset, invoice, page


def sha_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- training/feedback.py


@pytest.fixture
def review(tmp_path):
    """A processing root with two documents in review and an export correcting both (one badly)."""
    config = ProcessingConfig(
        root=tmp_path / "processing", inbox=tmp_path / "inbox", service_url="", api_key=""
    )
    engine = results.connect(f"sqlite:///{tmp_path / 'results.db'}")
    good, bad = sha_of("good"), sha_of("bad")
    page = Image.new("RGB", (600, 800), "white")
    wrong = {**TRUTH, "total": "1910.00"}
    tasks = [
        reviewed(in_review(config, engine, good, page, wrong, "subtotal + tax != total"), 1, TRUTH),
        reviewed(
            in_review(config, engine, bad, page, wrong, "subtotal + tax != total"),
            2,
            {**TRUTH, "total": "1290.00"},
        ),
    ]
    export = folder(config, "inbox") / "project-1-at-2026-03-02.json"
    export.write_text(json.dumps(tasks))
    return config, engine, good, bad, export


def test_a_correction_wins_once_and_a_bad_one_is_listed(review, tmp_path):
    config, engine, good, bad, export = review
    original = export.read_bytes()
    summary = apply_corrections(config, engine, tmp_path / "dataset")
    assert summary | {"added": 1, "stored": 1, "accepted": 1, "rejected": 1} == summary
    records = read_split(tmp_path / "dataset" / "train")
    assert [(r.doc_id, r.gt_parse) for r in records] == [(good, TRUTH)]
    row = results.fetch(engine, [good])[0]
    assert (row["status"], row["fields"], row["reviewed_by"], row["reason"], row["checks"]) == (
        "stored",
        TRUTH,
        "3",
        None,
        [],
    )
    assert row["reviewed_at"].isoformat().startswith("2026-03-02T10:00:00")
    assert results.fetch(engine, [bad])[0]["status"] == "review"
    assert (
        not (config.root / "review" / f"{good}.json").exists()
        and (config.root / "review" / f"{bad}.json").exists()
    )
    assert collect(config) == [] and (folder(config, "done") / export.name).read_bytes() == original
    listed = json.loads((folder(config, "rejected") / f"{export.name}.rejected.json").read_text())["rejected"]
    assert listed == [
        {
            "item": "task 2",
            "doc_id": bad,
            "file_name": f"{bad[:8]}.pdf",
            "reason": "subtotal 1000.00 + tax 190.00 != total 1290.00",
        }
    ]

    # Nothing new: nothing changes. The same export again: no data changes, nothing is stored twice.
    before = (digest(tmp_path / "dataset"), results.fetch(engine), digest(config.root))
    assert apply_corrections(config, engine, tmp_path / "dataset")["exports"] == 0
    export.write_bytes(original)
    again = apply_corrections(config, engine, tmp_path / "dataset")
    assert (again["unchanged"], again["stored"], again.get("added"), again["updated"]) == (1, 0, 0, 0)
    assert (digest(tmp_path / "dataset"), results.fetch(engine), digest(config.root)) == before


def test_files_that_are_not_exports_are_set_aside_and_names_never_collide(review, tmp_path):
    config, engine, good, _, export = review
    inbox = folder(config, "inbox")
    (inbox / "notes.txt").write_text("the vendor on page 2 is wrong")
    (inbox / "project-2.json").write_text('{"tasks": []}')
    (inbox / "project-3.json.part").write_text("[")  # still downloading: left alone
    summary = apply_corrections(config, engine, tmp_path / "dataset")
    assert (summary["exports"], summary["unreadable"]) == (1, 2)
    rejected = folder(config, "rejected")
    assert (rejected / "notes.txt").read_text() == "the vendor on page 2 is wrong"
    assert "not a JSON file" in json.loads((rejected / "notes.txt.reason.json").read_text())["reason"]
    assert "list of tasks" in json.loads((rejected / "project-2.json.reason.json").read_text())["reason"]
    assert [p.name for p in collect(config)] == [] and (inbox / "project-3.json.part").exists()

    # A later export under the same name is filed beside the first, not over it.
    tasks = json.loads((folder(config, "done") / export.name).read_text())[:1]
    tasks[0]["annotations"][0]["result"] = textareas({**TRUTH, "vendor_name": "Nordwerk AG"})
    export.write_text(json.dumps(tasks))
    assert apply_corrections(config, engine, tmp_path / "dataset")["updated"] == 1
    assert len(list(folder(config, "done").iterdir())) == 2
    assert results.fetch(engine, [good])[0]["fields"]["vendor_name"] == "Nordwerk AG"


# ---------------------------------------------------------------- the DAG


@pytest.fixture
def project(generated, tmp_path):
    """A git + DVC project whose `data/` (the generated dataset less one invoice) is versioned and pushed;
    the invoice left out has been processed and sent to review, with two other documents."""
    dataset, invoice, page = dataset_less_one(generated, tmp_path / "dataset")
    root = make_project(tmp_path / "project", dataset, {"dags": {"retries": 0}})

    config = ProcessingConfig(
        root=root / "var" / "processing", inbox=root / "inbox", service_url="", api_key=""
    )
    engine = results.connect(results.default_url(root))
    truth = invoice.gt_parse
    good, bad, partial = sha_of("good"), sha_of("bad"), sha_of("partial")
    blank = Image.new("RGB", (600, 800), "white")
    misread = {**truth, "total": "0.00"}
    tasks = [
        reviewed(in_review(config, engine, good, page, misread, "missing total"), 101, truth),
        reviewed(
            in_review(config, engine, bad, blank, misread, "missing total"),
            102,
            {**truth, "invoice_date": "2026-02-31"},
        ),
        reviewed(
            in_review(config, engine, partial, blank, misread, "missing total"),
            103,
            {"vendor_name": truth["vendor_name"], "total": truth["total"]},
        ),
    ]
    inbox = folder(config, "inbox")
    (inbox / "project-1-at-2026-03-02-10-00.json").write_text(json.dumps(tasks))
    (inbox / "notes.txt").write_text("not an export")
    return root, config, engine, (good, bad, partial), truth


@pytest.mark.slow
def test_feedback_dag_merges_corrections_versions_the_data_and_announces_it_once(
    project, tmp_path, airflow_home
):
    root, config, engine, (good, bad, partial), truth = project
    env = airflow_env(airflow_home, root)
    events = asset_events(env, "labeled_invoices")
    version = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]

    state, log = dags_test(env, "invoice_feedback")
    tasks = task_states(env, "invoice_feedback")
    assert state == "success" and set(tasks.values()) == {"success"}, (tasks, log[-6000:])
    assert len(tasks) == 7  # pull_corrections included: no Label Studio configured here, nothing pulled

    # The dataset holds the corrected invoice under its sha256, in train, with the reviewer's values.
    records = {r.doc_id: r for r in read_split(root / "data" / "train")}
    assert records[good].gt_parse == truth and records[good].meta["reviewer"] == 3
    assert (root / "data" / "train" / f"{good}.png").read_bytes() == (
        config.root / "pages" / good / "page-001.png"
    ).read_bytes()
    assert bad not in records and partial not in records
    # ... versioned: a new md5, the workspace matches it and the remote holds it.
    new_version = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    assert new_version != version
    assert json.loads(run("dvc", "status", "--json", cwd=root)) == {}
    assert json.loads(run("dvc", "status", "--cloud", "--json", cwd=root)) == {}
    assert (tmp_path / "project-remote" / "files" / "md5" / new_version[:2] / new_version[2:]).is_file()

    # The results database: the correction wins, the others stay in review with their tasks.
    rows = {row["sha256"]: row for row in results.fetch(engine)}
    assert (rows[good]["status"], rows[good]["fields"], rows[good]["reviewed_by"], rows[good]["reason"]) == (
        "stored",
        truth,
        "3",
        None,
    )
    assert rows[bad]["status"] == rows[partial]["status"] == "review"
    (export,) = (config.root / "exports").iterdir()  # the corrected invoice reaches accounting
    assert [(r["sha256"], r["total"]) for r in json.loads((export / "invoices.json").read_text())] == [
        (good, truth["total"])
    ]
    review = config.root / "review"
    assert sorted(p.stem for p in review.iterdir()) == sorted([bad, partial])

    # Rejections are listed with their reasons; nothing is lost.
    feedback = config.root / "feedback"
    assert list((feedback / "inbox").iterdir()) == []
    assert [p.name for p in (feedback / "done").iterdir()] == ["project-1-at-2026-03-02-10-00.json"]
    listed = json.loads(
        (feedback / "rejected" / "project-1-at-2026-03-02-10-00.json.rejected.json").read_text()
    )
    reasons = {r["doc_id"]: r["reason"] for r in listed["rejected"]}
    assert set(reasons) == {bad, partial}
    assert reasons[bad].startswith("invoice_date") and "2026-02-31" in reasons[bad]
    assert reasons[partial] == "required fields missing: invoice_date"
    assert (feedback / "rejected" / "notes.txt").read_text() == "not an export"
    assert (
        "not a JSON file"
        in json.loads((feedback / "rejected" / "notes.txt.reason.json").read_text())["reason"]
    )

    # The new version was announced once: `invoice_training` listens to it.
    assert asset_events(env, "labeled_invoices") == events + 1

    # An empty inbox: the run skips everything, announces nothing and changes no data.
    def state_of_everything():
        return (
            digest(root / "data"),
            (root / "data.dvc").read_text(),
            results.fetch(engine),
            digest(config.root),
        )

    before = state_of_everything()
    state, log = dags_test(env, "invoice_feedback")
    tasks = task_states(env, "invoice_feedback")
    assert state == "success", log[-6000:]
    assert tasks.pop("pull_corrections") == tasks.pop("collect_corrections") == "success", tasks
    assert set(tasks.values()) == {"skipped"}, tasks
    assert asset_events(env, "labeled_invoices") == events + 1
    assert state_of_everything() == before

    # The same export dropped again: merged as a no-op, the version does not move, nothing is announced.
    export = feedback / "done" / "project-1-at-2026-03-02-10-00.json"
    shutil.copyfile(export, feedback / "inbox" / export.name)
    state, log = dags_test(env, "invoice_feedback")
    tasks = task_states(env, "invoice_feedback")
    assert state == "success" and tasks.pop("announce_data_version") == "skipped", (tasks, log[-6000:])
    assert set(tasks.values()) == {"success"}, tasks
    assert asset_events(env, "labeled_invoices") == events + 1
    assert state_of_everything() == before
