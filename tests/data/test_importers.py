"""Importers into Donut's layout: the real-invoice sample and Label Studio exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from training.data import SPLITS, DatasetError, import_label_studio, import_labels_folder, read_split
from training.schema import FIELDS
from training.validate import validate_dataset


def sample_of(realdata: Path, source: str, ids: list[str], into: Path) -> Path:
    """A labels.jsonl + images/ folder with a few records of one source."""
    folder = into / source
    (folder / "images").mkdir(parents=True)
    lines = []
    for line in (realdata / source / "labels.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["id"] in ids:
            shutil.copy(realdata / source / record["image"], folder / record["image"])
            lines.append(line)
    (folder / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_real_documents_import_into_a_valid_dataset(realdata, tmp_path):
    dataset = tmp_path / "dataset"
    sroie = sample_of(realdata, "sroie", ["sroie_008", "sroie_015"], tmp_path)
    parsee = sample_of(realdata, "parsee", ["Calendly-invoice_3189846", "Rechnung_Indeed_com"], tmp_path)
    invoices = sample_of(realdata, "invoice2data", ["AmazonWebServices", "QualityHosting"], tmp_path)
    for folder in (sroie, parsee, invoices):
        report = import_labels_folder(folder, dataset, split="test")
        assert report.rejected == [] and report.imported["added"] == 2
    records = {r.doc_id: r for r in read_split(dataset / "test")}
    assert set(records) == {"sroie-sroie_008", "sroie-sroie_015", "parsee-Calendly-invoice_3189846",
                            "parsee-Rechnung_Indeed_com", "invoice2data-AmazonWebServices", "invoice2data-QualityHosting"}
    sroie_label = records["sroie-sroie_008"].gt_parse
    assert list(sroie_label) == list(FIELDS)
    assert sroie_label == {**dict.fromkeys(FIELDS), "vendor_name": "PERNIAGAAN ZHENG HUI", "invoice_date": "2018-02-12",
                           "total": "112.45"}
    aws = records["invoice2data-AmazonWebServices"].gt_parse
    assert aws["currency"] == "USD" and aws["line_items"][0] == {
        "description": "AWS Data Transfer", "quantity": None, "unit_price": "0.01", "amount": None}
    assert records["parsee-Calendly-invoice_3189846"].meta["source"] == "parsee"
    for split in SPLITS:
        assert (dataset / split / "metadata.jsonl").exists()
    report = validate_dataset(dataset, progress=False)
    assert report.success, report.failures
    # Importing again changes nothing.
    assert import_labels_folder(sroie, dataset, split="test").imported == {"added": 0, "updated": 0, "unchanged": 2}


def test_real_label_with_a_discount_fails_the_arithmetic_rule(realdata, tmp_path):
    """AzureInterior bills 1 x 1.00 as 0.90: validation must flag it rather than pass it silently."""
    folder = sample_of(realdata, "invoice2data", ["AzureInterior"], tmp_path)
    import_labels_folder(folder, tmp_path / "dataset")
    failures = validate_dataset(tmp_path / "dataset", progress=False).failures
    assert [(f.rule, f.file) for f in failures] == [("arithmetic_consistent", "test/invoice2data-AzureInterior.png")]
    assert "line 3: 1 x 1.00 != 0.90" in failures[0].detail


def test_bad_records_in_a_labels_folder_are_set_aside(realdata, tmp_path):
    folder = sample_of(realdata, "sroie", ["sroie_008"], tmp_path)
    with (folder / "labels.jsonl").open("a") as handle:
        handle.write("{not json\n")
        handle.write(json.dumps({"id": "ghost", "image": "images/ghost.png", "fields": {}}) + "\n")
        handle.write(json.dumps({"id": "sroie_008b", "image": "images/sroie_008.png", "fields": {"total": "abc"}}) + "\n")
    report = import_labels_folder(folder, tmp_path / "dataset")
    assert report.imported["added"] == 1
    reasons = {r["item"]: r["reason"] for r in report.rejected}
    assert set(reasons) == {"labels.jsonl:2", "labels.jsonl:3", "labels.jsonl:4"}
    assert "JSONDecodeError" in reasons["labels.jsonl:2"]
    assert "missing" in reasons["labels.jsonl:3"]
    assert "total" in reasons["labels.jsonl:4"]


def test_a_folder_without_labels_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="labels.jsonl"):
        import_labels_folder(tmp_path, tmp_path / "dataset")


# ---------------------------------------------------------------- Label Studio


def text(field: str, value: str) -> dict:
    return {"from_name": field, "to_name": "image", "type": "textarea", "value": {"text": [value]}}


def annotation(results: list[dict], updated_at: str = "2026-12-01T10:00:00Z", cancelled: bool = False) -> dict:
    return {"id": abs(hash(updated_at)) % 1000, "completed_by": 7, "result": results, "was_cancelled": cancelled,
            "updated_at": updated_at}


FULL = [
    text("vendor_name", "Nordwerk GmbH"), text("vendor_address", "Hauptstraße 5, 10115 Berlin"),
    text("customer_name", "Anna Schmidt"), text("invoice_number", "RE-2026-0042"),
    text("invoice_date", "04.12.2026"), text("due_date", "2027-01-03"), text("currency", "EUR"),
    text("subtotal", "1.000,00"), text("tax", "190,00"), text("total", "1.190,00"),
    text("line_items", "Consulting | 8 | 100,00 | 800,00\nSupport plan | 1 | 200,00 | 200,00"),
]


@pytest.fixture
def label_studio_export(tmp_path: Path) -> Path:
    """An export as Label Studio writes it, with good tasks and one of each kind of bad one."""
    images = tmp_path / "media"
    (images / "inbox").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (800, 1000), "white").save(images / "inbox" / name)
    tasks = [
        {"id": 1, "data": {"image": "/data/local-files/?d=inbox/a.png"}, "annotations": [annotation(FULL)]},
        {"id": 2, "data": {"image": "inbox/b.png", "doc_id": "sha-b"}, "annotations": [
            annotation([text("vendor_name", "Old name"), text("total", "5")], "2026-11-01T00:00:00Z"),
            annotation([text("vendor_name", "Acme Inc."), text("total", "$1,234.50"), text("currency", "usd"),
                        text("invoice_date", "Dec 2, 2026"),
                        text("line_items", json.dumps([{"description": "Widget", "quantity": "2", "unit_price": "617.25",
                                                        "amount": "1234.50"}]))], "2026-12-02T00:00:00Z")]},
        {"id": 3, "data": {"image": "inbox/c.png"}, "annotations": [annotation(FULL, cancelled=True)]},
        {"id": 4, "data": {"image": "inbox/c.png"}, "annotations": [annotation([*FULL[:4], text("invoice_date", "32.13.2026")])]},
        {"id": 5, "data": {"image": "inbox/missing.png"}, "annotations": [annotation(FULL)]},
        {"id": 6, "data": {"image": "inbox/c.png"}, "annotations": [annotation([*FULL[:-1], text("line_items", "Widget | 2 | 3")])]},
        {"id": 7, "data": {"image": "inbox/c.png"}, "annotations": [
            annotation([text("vendor_name", "No total Ltd"), text("invoice_date", "2026-12-01")])]},
        {"id": 8, "data": {"image": "inbox/c.png"}, "annotations": [annotation([{"from_name": "total", "value": {"text": 12}}])]},
        "not a task",
    ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    return export


def test_label_studio_export_imports_reviewed_tasks_and_rejects_bad_ones(label_studio_export, tmp_path):
    dataset, images = tmp_path / "dataset", tmp_path / "media"
    report = import_label_studio(label_studio_export, images, dataset, split="train")
    assert report.imported == {"added": 2, "updated": 0, "unchanged": 0}
    reasons = {r["item"]: r["reason"] for r in report.rejected}
    assert set(reasons) == {"task 3", "task 4", "task 5", "task 6", "task 7", "task 8", "item 8"}
    assert "no completed annotation" in reasons["task 3"]
    assert reasons["task 4"].startswith("invoice_date")
    assert "not found" in reasons["task 5"]
    assert "needs 4 cells" in reasons["task 6"]
    assert "required fields missing: total" in reasons["task 7"]
    assert "list of strings" in reasons["task 8"]
    assert "not an object" in reasons["item 8"]

    records = {r.doc_id: r for r in read_split(dataset / "train")}
    assert set(records) == {"ls-1", "sha-b"}
    full = records["ls-1"].gt_parse
    assert full["invoice_date"] == "2026-12-04" and full["total"] == "1190.00" and full["currency"] == "EUR"
    assert full["line_items"][0] == {"description": "Consulting", "quantity": "8", "unit_price": "100.00", "amount": "800.00"}
    latest = records["sha-b"].gt_parse
    assert latest["vendor_name"] == "Acme Inc." and latest["total"] == "1234.50" and latest["currency"] == "USD"
    assert records["sha-b"].meta == {"source": "label_studio", "task_id": 2, "reviewer": 7, "reviewed_at": "2026-12-02T00:00:00Z"}
    assert validate_dataset(dataset, progress=False).success


def test_label_studio_reimport_is_idempotent_and_a_correction_replaces_the_label(label_studio_export, tmp_path):
    dataset, images = tmp_path / "dataset", tmp_path / "media"
    import_label_studio(label_studio_export, images, dataset)
    assert import_label_studio(label_studio_export, images, dataset).imported == {"added": 0, "updated": 0, "unchanged": 2}
    tasks = json.loads(label_studio_export.read_text())
    tasks[1]["annotations"].append(annotation([text("vendor_name", "Acme Incorporated"), text("total", "1234.50"),
                                               text("invoice_date", "2026-12-02")],
                                              "2026-12-03T00:00:00Z"))
    label_studio_export.write_text(json.dumps(tasks))
    assert import_label_studio(label_studio_export, images, dataset).imported == {"added": 0, "updated": 1, "unchanged": 1}
    records = [r for r in read_split(dataset / "train") if r.doc_id == "sha-b"]
    assert len(records) == 1 and records[0].gt_parse["vendor_name"] == "Acme Incorporated"


def test_an_export_that_is_not_a_task_list_is_an_error(tmp_path):
    (tmp_path / "export.json").write_text('{"tasks": []}')
    with pytest.raises(DatasetError, match="list of tasks"):
        import_label_studio(tmp_path / "export.json", tmp_path, tmp_path / "dataset")
