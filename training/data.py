"""Donut's dataset layout (`<split>/metadata.jsonl` + images) and the importers into it.

A metadata line is `{"file_name": ..., "ground_truth": "{\"gt_parse\": {...}}", "meta": {...}}`: exactly what
donut-python reads, plus an optional `meta` object (source, layout family, reviewer) used for slicing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from training.schema import FIELDS, REQUIRED_FIELDS, LabelError, normalize_label

SPLITS: tuple[str, ...] = ("train", "validation", "test")
METADATA = "metadata.jsonl"


class DatasetError(ValueError):
    """A dataset file that cannot be read as Donut's layout."""


@dataclass
class Record:
    """One labeled document of a split."""

    file_name: str
    gt_parse: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def doc_id(self) -> str:
        return Path(self.file_name).stem

    def to_json(self) -> str:
        line = {
            "file_name": self.file_name,
            "ground_truth": json.dumps({"gt_parse": self.gt_parse}, ensure_ascii=False),
        }
        if self.meta:
            line["meta"] = self.meta
        return json.dumps(line, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Record:
        """Parse a metadata line; raises DatasetError saying what is wrong with it."""
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"not JSON: {error}") from error
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("file_name"), str)
            or "ground_truth" not in raw
        ):
            raise DatasetError("needs a string 'file_name' and a 'ground_truth'")
        truth = raw["ground_truth"]
        try:
            truth = json.loads(truth) if isinstance(truth, str) else truth
        except json.JSONDecodeError as error:
            raise DatasetError(f"ground_truth is not JSON: {error}") from error
        if not isinstance(truth, dict) or not isinstance(truth.get("gt_parse"), dict):
            raise DatasetError("ground_truth needs a 'gt_parse' object")
        return cls(raw["file_name"], truth["gt_parse"], raw.get("meta") or {})


def iter_split(split_dir: Path) -> Iterator[tuple[int, Record | DatasetError]]:
    """Yield `(line_number, record or the error that line has)` for every non-blank metadata line."""
    path = Path(split_dir) / METADATA
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield number, Record.from_json(line)
                except DatasetError as error:
                    yield number, error


def read_split(split_dir: Path) -> list[Record]:
    """All records of a split; raises DatasetError at the first unreadable line."""
    records = []
    for number, item in iter_split(split_dir):
        if isinstance(item, DatasetError):
            raise DatasetError(f"{Path(split_dir) / METADATA}:{number}: {item}")
        records.append(item)
    return records


def write_split(split_dir: Path, records: Iterable[Record]) -> None:
    """Write `metadata.jsonl` atomically (a crash never leaves half a file), sorted by file name so that the
    bytes of a dataset do not depend on the order its documents arrived in."""
    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    tmp = split_dir / f".{METADATA}.tmp"
    lines = sorted(records, key=lambda record: record.file_name)
    tmp.write_text("".join(record.to_json() + "\n" for record in lines), encoding="utf-8")
    tmp.replace(split_dir / METADATA)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _same_file(source: Path, destination: Path) -> bool:
    return destination.exists() and sha256_file(destination) == sha256_file(source)


def upsert(dataset_dir: Path, split: str, new: list[tuple[Record, Path]]) -> dict[str, int]:
    """Add or replace documents (by id, in any split) and copy their images; a re-run changes nothing.

    A document whose id already lives in another split is replaced there, so a correction never makes the
    same invoice appear in two splits.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    dataset_dir = Path(dataset_dir)
    existing = {s: read_split(dataset_dir / s) for s in SPLITS}
    home = {record.doc_id: s for s, records in existing.items() for record in records}
    counts = {"added": 0, "updated": 0, "unchanged": 0}
    for record, image in new:
        target = home.get(record.doc_id, split)
        records = existing[target]
        old = next((r for r in records if r.doc_id == record.doc_id), None)
        # The image and, where there is one, its PDF twin travel together.
        files = [(image, record.file_name)]
        pdf = record.meta.get("pdf")
        if pdf and (image.parent / pdf).is_file():
            files.append((image.parent / pdf, pdf))
        changed = [
            (source, name) for source, name in files if not _same_file(source, dataset_dir / target / name)
        ]
        if old is not None and old.to_json() == record.to_json() and not changed:
            counts["unchanged"] += 1
            continue
        (dataset_dir / target).mkdir(parents=True, exist_ok=True)
        for source, name in changed:
            shutil.copyfile(source, dataset_dir / target / name)
        if old is None:
            records.append(record)
            counts["added"] += 1
        else:
            if old.file_name != record.file_name:
                (dataset_dir / target / old.file_name).unlink(missing_ok=True)
            records[records.index(old)] = record
            counts["updated"] += 1
        home[record.doc_id] = target
    for s, records in existing.items():
        write_split(dataset_dir / s, records)
    return counts


def merge_dataset(source_dir: Path, dataset_dir: Path, replace_source: str | None = None) -> dict[str, int]:
    """Upsert every document of another Donut dataset into `dataset_dir`, keeping each in its split.

    With `replace_source`, documents of that `meta.source` which the other dataset no longer has (in the same
    split) are removed first, so regenerating the synthetic part with new parameters leaves nothing stale.
    """
    source_dir, dataset_dir = Path(source_dir), Path(dataset_dir)
    incoming = {s: read_split(source_dir / s) for s in SPLITS}
    keep = {(split, record.doc_id) for split, records in incoming.items() for record in records}
    counts = {"added": 0, "updated": 0, "unchanged": 0, "removed": 0}
    if replace_source:
        for split in SPLITS:
            records = read_split(dataset_dir / split)
            # Documents of that source follow the source's split assignment too.
            stale = [
                r for r in records if r.meta.get("source") == replace_source and (split, r.doc_id) not in keep
            ]
            for record in stale:
                for name in (record.file_name, record.meta.get("pdf")):
                    if name:
                        (dataset_dir / split / name).unlink(missing_ok=True)
            if stale:
                write_split(dataset_dir / split, [r for r in records if r not in stale])
            counts["removed"] += len(stale)
    for split, records in incoming.items():
        if records:
            for key, value in upsert(
                dataset_dir, split, [(r, source_dir / split / r.file_name) for r in records]
            ).items():
                counts[key] += value
    for split in SPLITS:
        if not (dataset_dir / split / METADATA).exists():
            write_split(dataset_dir / split, [])
    return counts


# ---------------------------------------------------------------- importers


@dataclass
class ImportReport:
    """What an importer took and what it set aside, with the reason for each."""

    imported: dict[str, int]
    rejected: list[dict[str, str]]
    accepted: list[Record] = field(default_factory=list)  # the records taken, in the source's order

    def as_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "rejected": self.rejected}


def import_labels_folder(source: Path, dataset_dir: Path, split: str = "test") -> ImportReport:
    """Import a `labels.jsonl` + `images/` folder (one JSON record per document with canonical `fields`)."""
    source = Path(source)
    labels = source / "labels.jsonl"
    if not labels.exists():
        raise DatasetError(f"{labels} not found: expected a labels.jsonl beside an images/ folder")
    accepted, rejected = [], []
    for number, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            image = source / raw["image"]
            if not image.is_file():
                raise DatasetError(f"image {raw['image']} is missing")
            label = normalize_label(raw["fields"], day_first=True)
        except (json.JSONDecodeError, KeyError, TypeError, DatasetError, LabelError) as error:
            rejected.append({"item": f"{labels.name}:{number}", "reason": f"{type(error).__name__}: {error}"})
            continue
        doc_id = f"{raw.get('source', source.name)}-{raw.get('id', image.stem)}"
        meta = {
            "source": raw.get("source", source.name),
            "doc_type": raw.get("doc_type"),
            "origin_id": raw.get("id"),
        }
        accepted.append((Record(doc_id + image.suffix.lower(), label, meta), image))
    imported = upsert(dataset_dir, split, accepted) if accepted else {}
    return ImportReport(imported, rejected, [record for record, _ in accepted])


def _task_image(task: dict[str, Any], images_root: Path) -> Path:
    """Resolve a Label Studio task's image: the first of the platform's `data.pages` (relative to the
    processing root, wherever Label Studio serves them from), else a local-files URL, an upload path, file://
    or a plain path."""
    pages = (task.get("data") or {}).get("pages")
    if isinstance(pages, list) and pages and isinstance(pages[0], str):
        return images_root / pages[0]
    value = (task.get("data") or {}).get("image")
    if not isinstance(value, str) or not value:
        raise DatasetError("task has no data.image")
    url = urlparse(value)
    if url.path.startswith("/data/local-files"):
        relative = parse_qs(url.query).get("d", [""])[0]
        return images_root / unquote(relative)
    if url.scheme == "file":
        return Path(unquote(url.path))
    if url.path.startswith("/data/upload"):
        return images_root / Path(unquote(url.path)).name
    path = Path(unquote(value))
    return path if path.is_absolute() else images_root / path


def _latest_annotation(task: dict[str, Any]) -> dict[str, Any]:
    annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not annotations:
        raise DatasetError("task has no completed annotation")
    return max(
        annotations, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id", 0))
    )


def _parse_line_items(text: str) -> list[dict[str, str | None]]:
    """Line items typed by a reviewer: a JSON list, or one `description | qty | unit price | amount` per line."""
    text = text.strip()
    if text.startswith("["):
        items = json.loads(text)
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise DatasetError("line_items JSON must be a list of objects")
        return items
    items = []
    for row in filter(str.strip, text.splitlines()):
        cells = [c.strip() or None for c in row.split("|")]
        if len(cells) != 4:
            raise DatasetError(
                f"line item row {row!r} needs 4 cells: description | quantity | unit_price | amount"
            )
        items.append(dict(zip(("description", "quantity", "unit_price", "amount"), cells, strict=True)))
    return items


def annotation_fields(annotation: dict[str, Any]) -> dict[str, Any]:
    """Canonical fields from one Label Studio annotation (TextArea per field, `from_name` = field name)."""
    fields: dict[str, Any] = {}
    for result in annotation.get("result") or []:
        name, value = result.get("from_name"), result.get("value") or {}
        if name not in FIELDS:
            continue
        texts = value.get("text")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise DatasetError(f"{name}: expected value.text to be a list of strings, got {texts!r}")
        text = "\n".join(texts).strip()
        fields[name] = _parse_line_items(text) if name == "line_items" and text else (text or None)
    if not fields:
        raise DatasetError("annotation has no canonical field")
    return fields


def import_label_studio(
    export: Path,
    images_root: Path,
    dataset_dir: Path,
    split: str = "train",
    required: Iterable[str] = REQUIRED_FIELDS,
    check: Callable[[dict[str, Any]], list[str]] | None = None,
) -> ImportReport:
    """Import reviewed tasks from a Label Studio JSON export; malformed ones are rejected with their reason,
    as are labels for which `check` (e.g. `arithmetic_problems`) returns problems.

    The document id is `data.doc_id` when the task carries one (the processing DAG sets it to the file's
    sha256), so a correction replaces the model's earlier label for the same invoice instead of duplicating it.
    """
    try:
        tasks = json.loads(Path(export).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{export} is not a JSON export: {error}") from error
    if not isinstance(tasks, list):
        raise DatasetError(f"{export}: a Label Studio JSON export is a list of tasks")
    accepted, rejected = [], []
    for position, task in enumerate(tasks):
        task_ref = f"task {task['id']}" if isinstance(task, dict) and "id" in task else f"item {position}"
        try:
            if not isinstance(task, dict):
                raise DatasetError("task is not an object")
            annotation = _latest_annotation(task)
            label = normalize_label(annotation_fields(annotation))
            missing = [name for name in required if label.get(name) is None]
            if missing:
                raise DatasetError(f"required fields missing: {', '.join(missing)}")
            problems = check(label) if check else []
            if problems:
                raise DatasetError("; ".join(problems))
            image = _task_image(task, Path(images_root))
            if not image.is_file():
                raise DatasetError(f"image {image} not found")
        except (DatasetError, LabelError, json.JSONDecodeError) as error:
            rejected.append({"item": task_ref, "reason": str(error)})
            continue
        doc_id = str(task["data"].get("doc_id") or f"ls-{task.get('id', position)}")
        meta = {
            "source": "label_studio",
            "task_id": task.get("id"),
            "reviewer": annotation.get("completed_by"),
            "reviewed_at": annotation.get("updated_at") or annotation.get("created_at"),
        }
        accepted.append((Record(doc_id + image.suffix.lower(), label, meta), image))
    imported = upsert(dataset_dir, split, accepted) if accepted else {}
    return ImportReport(imported, rejected, [record for record, _ in accepted])
