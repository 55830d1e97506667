"""Reviewers' corrections back into the data, one function per step of the `invoice_feedback` DAG.

Reviewers export their Label Studio project (JSON) into `feedback/inbox/` under the processing root. Each
export is merged into the labeled dataset (train split, document id = the file's sha256, so a correction
replaces any earlier label of the same invoice) and into the results database (the corrected record wins:
status `stored`, with its reviewer), then filed under `done/`. Tasks that cannot be taken are listed with their
reason in `rejected/<export>.rejected.json`; a file that is not a JSON export at all is moved to `rejected/`
whole, beside a `<file>.reason.json`.

Safe to re-run: the dataset write is an upsert by document id, a row that already holds the correction is left
alone, and an export leaves the inbox only once both are written. Torch-free: it runs in Airflow's environment.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from training import results
from training.config import load_params
from training.data import Record, import_label_studio, sha256_file
from training.processing import PARTIAL_SUFFIXES, ProcessingConfig
from training.schema import REQUIRED_FIELDS, arithmetic_problems

FOLDERS = ("inbox", "done", "rejected")


def folder(config: ProcessingConfig, name: str) -> Path:
    """`feedback/inbox`, `feedback/done` or `feedback/rejected` under the processing root, created on first use."""
    if name not in FOLDERS:
        raise ValueError(f"feedback folder must be one of {FOLDERS}, not {name!r}")
    path = config.root / "feedback" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def collect(config: ProcessingConfig) -> list[Path]:
    """The complete files waiting in the inbox, by name (hidden files and partial downloads are left)."""
    return sorted(
        path
        for path in folder(config, "inbox").iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() not in PARTIAL_SUFFIXES
    )


def read_tasks(export: Path) -> list[Any] | str:
    """The export's task list, or why it is not a Label Studio JSON export."""
    try:
        tasks = json.loads(export.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"not a JSON file: {error}"
    if not isinstance(tasks, list):
        return f"a Label Studio JSON export is a list of tasks, not a {type(tasks).__name__}"
    return tasks


def filed_name(target: Path, source: Path) -> str:
    """The name to file `source` under in folder `target`: its own, unless a different file already has it
    (then `<stem>-<sha256 prefix><suffix>`), so re-dropping an export overwrites only its identical copy."""
    existing = target / source.name
    if not existing.exists() or sha256_file(existing) == sha256_file(source):
        return source.name
    return f"{source.stem}-{sha256_file(source)[:12]}{source.suffix}"


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps(payload, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    partial.replace(path)


def set_aside(config: ProcessingConfig, export: Path, reason: str) -> Path:
    """Move a file that is not an export into rejected/, with `<name>.reason.json` beside it."""
    rejected = folder(config, "rejected")
    name = filed_name(rejected, export)
    write_json(rejected / f"{name}.reason.json", {"export": export.name, "reason": reason})
    export.replace(rejected / name)
    print(f"feedback: {export.name} set aside ({reason})")
    return rejected / name


def task_refs(tasks: list[Any]) -> dict[str, dict[str, Any]]:
    """What identifies each task for a reviewer, keyed as the importer names tasks (`task <id>`, `item <n>`)."""
    refs = {}
    for position, task in enumerate(tasks):
        if isinstance(task, dict) and "id" in task:
            data = task.get("data") if isinstance(task.get("data"), dict) else {}
            refs[f"task {task['id']}"] = {"doc_id": data.get("doc_id"), "file_name": data.get("file_name")}
        else:
            refs[f"item {position}"] = {}
    return refs


def reviewer(record: Record) -> str | None:
    """The annotation's `completed_by` as text (Label Studio exports a user id, or a user object)."""
    who = record.meta.get("reviewer")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return None if who is None else str(who)


def reviewed_at(record: Record) -> dt.datetime:
    """When the annotation was last saved, else now."""
    try:
        stamp = dt.datetime.fromisoformat(str(record.meta.get("reviewed_at")))
    except ValueError:
        return results.now()
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def store_correction(
    config: ProcessingConfig, engine: sa.Engine, record: Record, run_id: str | None = None
) -> bool | None:
    """Make the corrected label the document's record (`stored`, reviewer, no open reason; `run_id`, when
    given, so that this run's accounting export carries it) and close its review task. Returns whether the row
    changed, None when the document is not in the results database."""
    rows = results.fetch(engine, [record.doc_id])
    if not rows:
        return None
    values = {
        "status": "stored",
        "fields": record.gt_parse,
        "reviewed_by": reviewer(record),
        "reason": None,
        "checks": [],
    }
    changed = any(rows[0][key] != value for key, value in values.items())
    if changed:
        lineage = {"run_id": run_id} if run_id else {}
        results.update(engine, record.doc_id, reviewed_at=reviewed_at(record), **values, **lineage)
    (config.root / "review" / f"{record.doc_id}.json").unlink(missing_ok=True)
    return changed


def apply_corrections(
    config: ProcessingConfig,
    engine: sa.Engine,
    dataset_dir: Path,
    exports: list[Path] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Merge each export (default: everything in the inbox) into the dataset's train split and the results
    database, list its rejected tasks, and file it under done/. Rejected besides malformed tasks: labels
    without the required fields (params.yaml `validate.required_fields`) and labels whose amounts do not add
    up, which would fail the dataset's validation. Returns counts for the run."""
    required = tuple(load_params("validate").get("required_fields") or REQUIRED_FIELDS)
    summary = {
        key: 0
        for key in (
            "exports",
            "unreadable",
            "accepted",
            "rejected",
            "added",
            "updated",
            "unchanged",
            "stored",
            "not_in_results",
        )
    }
    for export in collect(config) if exports is None else [Path(e) for e in exports if Path(e).is_file()]:
        tasks = read_tasks(export)
        if isinstance(tasks, str):
            set_aside(config, export, tasks)
            summary["unreadable"] += 1
            continue
        report = import_label_studio(
            export,
            images_root=config.root,
            dataset_dir=dataset_dir,
            split="train",
            required=required,
            check=arithmetic_problems,
        )
        done = folder(config, "done")
        name = filed_name(done, export)
        if report.rejected:
            refs = task_refs(tasks)
            write_json(
                folder(config, "rejected") / f"{name}.rejected.json",
                {
                    "export": export.name,
                    "rejected": [{**r, **refs.get(r["item"], {})} for r in report.rejected],
                },
            )
        stored = [store_correction(config, engine, record, run_id) for record in report.accepted]
        export.replace(done / name)
        for key, value in report.imported.items():
            summary[key] += value
        summary["exports"] += 1
        summary["accepted"] += len(report.accepted)
        summary["rejected"] += len(report.rejected)
        summary["stored"] += sum(1 for s in stored if s)
        summary["not_in_results"] += sum(1 for s in stored if s is None)
        print(
            f"feedback: {export.name}: {len(report.accepted)} accepted ({report.imported or 'nothing new'}), "
            f"{len(report.rejected)} rejected, {sum(1 for s in stored if s)} results rows corrected"
        )
    return summary
