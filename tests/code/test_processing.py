"""Processing steps without services: the results database's upserts, inbox fingerprinting, rendering into
pages or quarantine, business rules, and review tasks that read back as the same fields."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from training import results
from training.data import annotation_fields, read_split
from training.processing import ProcessingConfig, business_rules, ingest, render, review_task

CONSISTENT = {
    "vendor_name": "Acme GmbH",
    "invoice_number": "INV-7",
    "invoice_date": "2026-03-01",
    "currency": "EUR",
    "subtotal": "100.00",
    "tax": "19.00",
    "total": "119.00",
    "line_items": [{"description": "Widget", "quantity": "2", "unit_price": "50.00", "amount": "100.00"}],
}
SURE = dict.fromkeys(CONSISTENT, 0.99)


@pytest.fixture
def config(tmp_path) -> ProcessingConfig:
    return replace(ProcessingConfig.from_params(), root=tmp_path / "processing", inbox=tmp_path / "inbox")


@pytest.fixture
def engine(tmp_path):
    return results.connect(f"sqlite:///{tmp_path / 'results.db'}")


def test_consistent_reading_passes_every_business_rule():
    assert business_rules(CONSISTENT, SURE, min_confidence=0.5) == []


@pytest.mark.parametrize(
    ("change", "confidence", "problem"),
    [
        ({"total": "120.00"}, SURE, "subtotal 100.00 + tax 19.00 != total 120.00"),
        ({"subtotal": "90.00", "total": "109.00"}, SURE, "line amounts sum 100.00 != subtotal 90.00"),
        ({"vendor_name": None}, SURE, "missing vendor_name"),
        ({}, {**SURE, "total": 0.2}, "low confidence total (0.20 < 0.5)"),
        ({"invoice_date": (dt.date.today() + dt.timedelta(days=3)).isoformat()}, SURE, "is in the future"),
    ],
)
def test_each_business_rule_names_what_is_wrong(change, confidence, problem):
    problems = business_rules({**CONSISTENT, **change}, confidence, min_confidence=0.5)
    assert any(problem in p for p in problems), problems


def test_a_delivery_is_new_once_and_then_counted_as_a_duplicate(engine):
    assert results.receive(engine, "ab" * 32, "a.pdf", "/x/a.pdf", "run-1") is True
    assert results.receive(engine, "ab" * 32, "copy-of-a.pdf", "/x/a.pdf", "run-2") is False
    (row,) = results.fetch(engine)
    assert (row["status"], row["duplicates"], row["file_name"]) == ("pending", 1, "a.pdf")
    with pytest.raises(KeyError):
        results.update(engine, "cd" * 32, status="stored")
    with pytest.raises(ValueError, match="unknown result columns"):
        results.update(engine, "ab" * 32, colour="red")


def test_ingest_keeps_new_bytes_once_and_leaves_partial_uploads(config, engine, generated):
    image = next((generated / "train").glob("*.png"))
    config.inbox.mkdir(parents=True)
    shutil.copy(image, config.inbox / "invoice.png")
    shutil.copy(image, config.inbox / "same-again.png")
    (config.inbox / "upload.pdf.part").write_bytes(b"%PDF-")
    (config.inbox / ".hidden.png").write_bytes(b"x")
    todo = ingest(config, engine, "run-1")
    assert len(todo) == 1
    assert sorted(p.name for p in config.inbox.iterdir()) == [".hidden.png", "upload.pdf.part"]
    (row,) = results.fetch(engine)
    assert row["duplicates"] == 1 and Path(row["path"]).read_bytes() == image.read_bytes()
    assert ingest(config, engine, "run-2") == todo  # still pending: offered again, not received again


def test_render_writes_pages_and_quarantines_what_cannot_be_read(config, engine, generated):
    record = next(r for r in read_split(generated / "train") if r.meta.get("pdf"))
    config.inbox.mkdir(parents=True)
    shutil.copy(generated / "train" / record.meta["pdf"], config.inbox / "invoice.pdf")
    (config.inbox / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    (config.inbox / "note.txt").write_text("hello")
    ready = render(config, engine, ingest(config, engine, "run-1"))
    rows = {row["file_name"]: row for row in results.fetch(engine)}
    assert ready == [rows["invoice.pdf"]["sha256"]] and rows["invoice.pdf"]["pages"] == 1
    assert rows["broken.pdf"]["status"] == "quarantine" and rows["broken.pdf"]["reason"].startswith(
        "broken_pdf"
    )
    assert rows["note.txt"]["reason"].startswith("unsupported_type")
    reason = json.loads(
        (config.root / "quarantine" / f"{rows['note.txt']['sha256']}.reason.json").read_text()
    )
    assert reason["file_name"] == "note.txt" and Path(rows["note.txt"]["path"]).exists()


def test_review_task_pre_annotation_reads_back_as_the_same_fields(config):
    row = {
        "sha256": "ef" * 32,
        "file_name": "a.png",
        "fields": CONSISTENT,
        "confidence": SURE,
        "model_name": "invoice-extractor",
        "model_version": "3",
        "reason": "low confidence total",
    }
    task = review_task(config, row)
    assert (
        task["data"]["doc_id"] == "ef" * 32
        and task["predictions"][0]["model_version"] == "invoice-extractor/3"
    )
    assert annotation_fields({"result": task["predictions"][0]["result"]}) == CONSISTENT
