"""The Great Expectations suite: passes a clean dataset, catches each planted defect with its file and rule."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from training.data import METADATA, read_split, write_split
from training.validate import Rules, validate_dataset


def edit_label(dataset: Path, split: str, index: int, **changes) -> str:
    """Change fields of one record's label; returns the record's `split/file_name`."""
    records = read_split(dataset / split)
    records[index].gt_parse.update(changes)
    write_split(dataset / split, records)
    return f"{split}/{records[index].file_name}"


def drop_field(dataset: Path, split: str, index: int, field: str) -> str:
    records = read_split(dataset / split)
    del records[index].gt_parse[field]
    write_split(dataset / split, records)
    return f"{split}/{records[index].file_name}"


def replace_image(dataset: Path, split: str, index: int, content: bytes) -> str:
    record = read_split(dataset / split)[index]
    (dataset / split / record.file_name).write_bytes(content)
    return f"{split}/{record.file_name}"


def failures_of(dataset: Path) -> set[tuple[str, str]]:
    return {(f.rule, f.file) for f in validate_dataset(dataset, progress=False).failures}


def test_clean_dataset_passes(generated):
    report = validate_dataset(generated, progress=False)
    assert report.success, report.failures[:5]
    assert report.documents == 40 and report.line_items > 40
    assert all(r["failed"] == 0 for r in report.rules.values())
    assert {"iso_date[invoice_date]", "iso_4217_currency", "arithmetic_consistent", "image_in_one_split"} <= set(report.rules)


def test_planted_defects_are_each_caught_with_file_and_rule(dataset):
    planted = {
        ("required_field[vendor_name]", edit_label(dataset, "train", 0, vendor_name=None)),
        ("canonical_keys_present", drop_field(dataset, "train", 1, "due_date")),
        ("iso_date[invoice_date]", edit_label(dataset, "train", 2, invoice_date="04.12.2026")),
        ("iso_date[due_date]", edit_label(dataset, "train", 3, due_date="2026-02-30")),
        ("decimal_amount[total]", edit_label(dataset, "train", 4, total="1.234,56")),
        ("iso_4217_currency", edit_label(dataset, "train", 5, currency="EURO")),
        ("image_readable", replace_image(dataset, "train", 7, b"\x89PNG\r\n\x1a\n this is not a png")),
        ("image_readable", replace_image(dataset, "train", 8, b"")),
    }
    records = read_split(dataset / "train")
    label = records[6].gt_parse
    planted.add(("arithmetic_consistent", edit_label(dataset, "train", 6, total=f"{float(label['total']) + 10:.2f}")))
    # The same image content in train and test leaks test data into training.
    train_record, test_record = records[9], read_split(dataset / "test")[0]
    shutil.copyfile(dataset / "train" / train_record.file_name, dataset / "test" / test_record.file_name)
    planted |= {("image_in_one_split", f"train/{train_record.file_name}"), ("image_in_one_split", f"test/{test_record.file_name}")}

    found = failures_of(dataset)
    assert planted <= found, f"missed: {planted - found}"
    # An arithmetic defect in one total is not reported under unrelated rules for that file.
    assert {rule for rule, file in found if file == f"train/{records[0].file_name}"} == {"required_field[vendor_name]"}


def test_failure_reasons_say_what_is_wrong(dataset):
    edit_label(dataset, "train", 0, currency="EURO")
    replace_image(dataset, "train", 1, b"")
    edit_label(dataset, "validation", 0, subtotal="1.00")
    reasons = {f.rule: f.detail for f in validate_dataset(dataset, progress=False).failures}
    assert reasons["iso_4217_currency"] == "value 'EURO'"
    assert reasons["image_readable"] == "empty file"
    assert "!= total" in reasons["arithmetic_consistent"]


def test_bad_metadata_line_duplicate_id_and_huge_image(dataset):
    duplicate = read_split(dataset / "train")[0]
    shutil.copyfile(dataset / "train" / duplicate.file_name, dataset / "validation" / duplicate.file_name)
    write_split(dataset / "validation", [*read_split(dataset / "validation"), duplicate])
    with (dataset / "validation" / METADATA).open("a") as handle:
        handle.write('{"file_name": "x.png", "ground_truth": "not json"}\n')
    huge = read_split(dataset / "test")[1]
    Image.new("L", (7000, 7000), 255).save(dataset / "test" / huge.file_name, "PNG")
    found = failures_of(dataset)
    assert ("metadata_json", f"validation/{METADATA}:6") in found
    assert ("unique_id", f"validation/{duplicate.file_name}") in found
    assert ("image_readable", f"test/{huge.file_name}") in found  # 49 Mpx is over the 40 Mpx bound


def test_small_images_fail_the_size_bounds(dataset):
    record = read_split(dataset / "train")[0]
    Image.new("RGB", (120, 90), "white").save(dataset / "train" / record.file_name)
    report = validate_dataset(dataset, Rules(min_side_px=200), progress=False)
    assert ("image_size", f"train/{record.file_name}") in {(f.rule, f.file) for f in report.failures}


def test_cli_exits_non_zero_and_writes_a_readable_report(dataset, tmp_path):
    bad_file = edit_label(dataset, "train", 3, invoice_date="yesterday")
    report_dir = tmp_path / "report"
    result = subprocess.run(["invoice", "data", "validate", str(dataset), "--report-dir", str(report_dir)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "iso_date[invoice_date]" in result.stderr and bad_file in result.stderr
    report = json.loads((report_dir / "validation.json").read_text())
    assert report["success"] is False
    assert {"rule": "iso_date[invoice_date]", "file": bad_file, "detail": "value 'yesterday'"} in report["failures"]
    page = (report_dir / "validation.html").read_text()
    assert "FAILED" in page and bad_file in page


def test_cli_passes_a_clean_dataset(generated, tmp_path):
    result = subprocess.run(["invoice", "data", "validate", str(generated), "--report-dir", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "PASSED" in result.stderr


@pytest.mark.parametrize("broken", ["", "{", '{"file_name": 3}'])
def test_unreadable_metadata_is_a_failure_not_a_crash(tmp_path, broken):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / METADATA).write_text(broken + "\n")
    report = validate_dataset(tmp_path, progress=False)
    if broken:
        assert [f.rule for f in report.failures] == ["metadata_json"]
    else:
        assert report.documents == 0
