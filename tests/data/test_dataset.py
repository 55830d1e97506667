"""Donut's layout on disk: metadata lines, merging generated data into the labeled dataset."""

from __future__ import annotations

import json

import pytest

from training.data import SPLITS, DatasetError, Record, merge_dataset, read_split, upsert
from training.synth.generate import GeneratorConfig, generate_dataset


def ids_by_split(dataset):
    return {split: sorted(r.doc_id for r in read_split(dataset / split)) for split in SPLITS}


def test_metadata_line_is_donut_compatible():
    record = Record("a.png", {"total": "1.00"}, {"source": "x"})
    line = json.loads(record.to_json())
    assert line["file_name"] == "a.png"
    assert json.loads(line["ground_truth"]) == {"gt_parse": {"total": "1.00"}}
    assert Record.from_json(record.to_json()) == record


@pytest.mark.parametrize(
    ("line", "message"),
    [("{", "not JSON"), ('{"file_name": "a.png"}', "ground_truth"), ('{"file_name": "a.png", "ground_truth": "{"}', "not JSON"),
     ('{"file_name": "a.png", "ground_truth": "{\\"x\\": 1}"}', "gt_parse")],
)
def test_bad_metadata_lines_say_what_is_wrong(line, message):
    with pytest.raises(DatasetError, match=message):
        Record.from_json(line)


def test_merge_is_idempotent(generated, tmp_path):
    target = tmp_path / "labeled"
    assert merge_dataset(generated, target, "synthetic")["added"] == 40
    assert merge_dataset(generated, target, "synthetic") == {"added": 0, "updated": 0, "unchanged": 40, "removed": 0}
    assert ids_by_split(target) == ids_by_split(generated)


def test_regenerating_smaller_leaves_nothing_stale_and_keeps_reviewed_documents(generated, tmp_path):
    target = tmp_path / "labeled"
    merge_dataset(generated, target, "synthetic")
    reviewed = read_split(generated / "test")[0]
    reviewed_copy = Record("review-1.png", reviewed.gt_parse, {"source": "label_studio"})
    upsert(target, "test", [(reviewed_copy, generated / "test" / reviewed.file_name)])

    smaller = tmp_path / "smaller"
    generate_dataset(GeneratorConfig(n=10, seed=7, pdf_share=0.25), smaller, progress=False)
    counts = merge_dataset(smaller, target, "synthetic")
    assert counts["removed"] == 40 - counts["unchanged"]
    expected = ids_by_split(smaller)
    expected["test"] = sorted([*expected["test"], "review-1"])
    assert ids_by_split(target) == expected
    on_disk = {p.name for split in SPLITS for p in (target / split).iterdir() if p.name != "metadata.jsonl"}
    listed = {name for split in SPLITS for r in read_split(target / split) for name in (r.file_name, r.meta.get("pdf")) if name}
    assert on_disk == listed, "no orphan files"


def test_a_correction_stays_in_the_split_where_the_document_lives(generated, tmp_path):
    target = tmp_path / "labeled"
    merge_dataset(generated, target)
    record = read_split(target / "test")[0]
    corrected = Record(record.file_name, {**record.gt_parse, "vendor_name": "Corrected GmbH"}, {"source": "label_studio"})
    assert upsert(target, "train", [(corrected, target / "test" / record.file_name)])["updated"] == 1
    assert [r.gt_parse["vendor_name"] for r in read_split(target / "test") if r.doc_id == record.doc_id] == ["Corrected GmbH"]
    assert record.doc_id not in ids_by_split(target)["train"]


def test_a_changed_pdf_twin_is_copied_again(generated, tmp_path):
    target = tmp_path / "labeled"
    merge_dataset(generated, target, "synthetic")
    split, record = next((s, r) for s in SPLITS for r in read_split(generated / s) if r.meta.get("pdf"))
    (target / split / record.meta["pdf"]).write_bytes(b"%PDF-1.4 stale")
    assert merge_dataset(generated, target, "synthetic")["updated"] == 1
    assert (target / split / record.meta["pdf"]).read_bytes() == (generated / split / record.meta["pdf"]).read_bytes()
