"""Reviewers in Label Studio: the review project, the queue pushed to it, corrections pulled back.

Label Studio is the source of truth for what it holds: a document (sha256, `data.doc_id`) already among the
project's tasks is never pushed again, and annotations are pulled by (id, updated_at), so every step can be
repeated. Pulled annotations land as a Label Studio export in the feedback inbox, where `invoice_feedback`
validates them, updates the stored records and versions them as labeled data. Torch-free: the DAGs' tasks
call it from Airflow's environment.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import sqlalchemy as sa
from rich.table import Table

from training import processing
from training.config import PROJECT_ROOT, load_params, setting
from training.data import sha256_file
from training.processing import ProcessingConfig
from training.schema import FIELDS, LINE_ITEM_FIELDS

PROJECT_TITLE = "Invoice review"
VIEW_TITLE = "Least confident first"


def labeling_config() -> str:
    """The page beside one pre-filled, editable input per canonical field; line items one per row."""
    inputs = "\n".join(
        f'      <Header value="{name}" size="6"/>\n'
        f'      <TextArea name="{name}" toName="image" editable="true" maxSubmissions="1" '
        f'rows="{6 if name == "line_items" else 1}" placeholder="{_placeholder(name)}"/>'
        for name in FIELDS
    )
    return f"""<View style="display: flex; gap: 1em">
  <View style="flex: 60%">
    <Image name="image" value="$image" zoom="true" zoomControl="true"/>
  </View>
  <View style="flex: 40%">
    <Header value="$file_name" size="5"/>
    <Text name="reasons" value="$reasons"/>
{inputs}
  </View>
</View>"""


def _placeholder(name: str) -> str:
    if name == "line_items":
        return " | ".join(LINE_ITEM_FIELDS) + " (one item per line)"
    return {"invoice_date": "YYYY-MM-DD", "due_date": "YYYY-MM-DD", "currency": "ISO 4217, e.g. EUR"}.get(
        name, ""
    )


@dataclass(frozen=True)
class ReviewConfig:
    """Where Label Studio is and how to reach it (params.yaml `review:`, LABEL_STUDIO_* variables override)."""

    url: str
    token: str
    project_title: str = PROJECT_TITLE
    # The folder Label Studio serves local files from (its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); page
    # links are made relative to it. None: the processing root, as `make up` starts it.
    document_root: Path | None = None
    timeout_s: float = 30.0

    @classmethod
    def from_params(cls) -> ReviewConfig | None:
        """None when no Label Studio is configured (an empty url): the queue then stays in review/ files."""
        section = load_params("review")
        url = setting("LABEL_STUDIO_URL", section, "url", "")
        if not url:
            return None
        token = os.environ.get("LABEL_STUDIO_API_KEY") or _token_file(section)
        root = setting("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", section, "document_root", "")
        return cls(
            url.rstrip("/"), token, section.get("project_title", PROJECT_TITLE), Path(root) if root else None
        )


def _token_file(section: dict[str, Any]) -> str:
    path = Path(section.get("token_file", "var/label-studio/token"))
    path = path if path.is_absolute() else PROJECT_ROOT / path
    if not path.exists():
        raise FileNotFoundError(f"no Label Studio token: set LABEL_STUDIO_API_KEY or run `make up` ({path})")
    return path.read_text().strip()


class LabelStudio:
    """The few Label Studio REST calls the platform needs (legacy token auth: no refresh)."""

    def __init__(self, config: ReviewConfig) -> None:
        self.config = config
        self.http = httpx.Client(
            base_url=config.url,
            headers={"Authorization": f"Token {config.token}"},
            timeout=config.timeout_s,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"Label Studio {method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def project(self, local_root: Path) -> int:
        """The review project's id, created on first use with its labeling interface, local-files storage
        (pages are served from `local_root`) and a view that lists the least confident tasks first."""
        for project in self.call("GET", "/api/projects", params={"page_size": 1000})["results"]:
            if project["title"] == self.config.project_title:
                return project["id"]
        pages = local_root / "pages"
        pages.mkdir(parents=True, exist_ok=True)  # Label Studio only accepts a storage folder that exists
        project = self.call(
            "POST",
            "/api/projects",
            json={
                "title": self.config.project_title,
                "description": "Invoices the model was unsure of: correct the pre-filled fields and submit.",
                "label_config": labeling_config(),
                "sampling": "Sequential sampling",
                "show_collab_predictions": True,
            },
        )
        self.call(
            "POST",
            "/api/storages/localfiles",
            json={
                "project": project["id"],
                "title": "processing pages",
                "path": str(pages),
                "use_blob_urls": False,
            },
        )
        self.call(
            "POST",
            "/api/dm/views",
            json={
                "project": project["id"],
                "data": {"title": VIEW_TITLE, "ordering": ["tasks:data.confidence"]},
            },
        )
        return project["id"]

    def emails(self) -> dict[int, str]:
        """User id → email: exports name the reviewer by id."""
        users = self.call("GET", "/api/users")
        return {
            user["id"]: user["email"]
            for user in (users.get("results", []) if isinstance(users, dict) else users)
        }

    def tasks(self, project: int, page_size: int = 500) -> list[dict[str, Any]]:
        """Every task of the project with its annotations and predictions in full (the export API lists
        predictions by id only)."""
        tasks: list[dict[str, Any]] = []
        while True:
            page = self.call(
                "GET",
                "/api/tasks",
                params={
                    "project": project,
                    "fields": "all",
                    "page_size": page_size,
                    "page": len(tasks) // page_size + 1,
                },
            )
            tasks += page["tasks"]
            if not page["tasks"] or len(tasks) >= page["total"]:
                return tasks


def queue_order(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Least confident first: the lowest per-field confidence of the model's reading, ascending."""
    return sorted(tasks, key=lambda task: task["data"].get("confidence", 0.0))


def client() -> LabelStudio | None:
    """A client for the configured Label Studio, or None when none is (the queue then stays in review/)."""
    config = ReviewConfig.from_params()
    if config is None:
        print("review: no Label Studio configured (params.yaml review.url or LABEL_STUDIO_URL)")
    return None if config is None else LabelStudio(config)


def push(client: LabelStudio, config: ProcessingConfig, shas: list[str] | None = None) -> dict[str, int]:
    """Create a task for each review-queue document (review/<sha>.json) not yet in the project, least
    confident first. `shas` limits the push to those documents."""
    project = client.project(config.root)
    present = {str(task["data"].get("doc_id")) for task in client.tasks(project)}
    files = sorted(config.folder("review").glob("*.json"))
    wanted = [f for f in files if (shas is None or f.stem in shas) and f.stem not in present]
    tasks = []
    served_from = client.config.document_root or config.root
    for path in wanted:
        task = json.loads(path.read_text())
        if task["data"].get("pages"):  # the first page, as Label Studio serves it
            page = (config.root / task["data"]["pages"][0]).relative_to(served_from)
            task["data"]["image"] = f"/data/local-files/?d={quote(str(page))}"
        scores = [r.get("score") for r in task["predictions"][0]["result"] if r.get("score") is not None]
        task["data"]["confidence"] = min(scores, default=0.0)
        tasks.append(task)
    if tasks:
        client.call("POST", f"/api/projects/{project}/import", json=queue_order(tasks))
    print(
        f"review: {len(tasks)} tasks pushed to Label Studio project {project}, {len(present)} already there"
    )
    return {"pushed": len(tasks), "present": len(present)}


def _pulled_path(config: ProcessingConfig) -> Path:
    return config.folder("feedback") / "label_studio_pulled.json"


def pull(client: LabelStudio, config: ProcessingConfig) -> Path | None:
    """Write the tasks whose annotations are new or changed since the last pull as an export into the
    feedback inbox; returns it, or None when nothing changed. The pulled (annotation id, updated_at) pairs
    are remembered only after the export is in place, so a crash repeats a pull instead of losing one."""
    project = client.project(config.root)
    pulled_path = _pulled_path(config)
    emails = client.emails()
    pulled = json.loads(pulled_path.read_text()) if pulled_path.exists() else {}
    changed = []
    for task in client.tasks(project):
        fresh = [
            a
            for a in task.get("annotations", [])
            if not a.get("was_cancelled") and pulled.get(str(a["id"])) != a.get("updated_at")
        ]
        if fresh:
            for annotation in task["annotations"]:  # reviewers by email: who corrected a stored record
                who = annotation.get("completed_by")
                annotation["completed_by"] = emails.get(who, who) if isinstance(who, int) else who
            changed.append(task)
            pulled.update({str(a["id"]): a.get("updated_at") for a in fresh})
    if not changed:
        return None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    inbox = config.folder("feedback") / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    export = inbox / f"label-studio-{stamp}.json"
    partial = export.with_suffix(".part")
    partial.write_text(json.dumps(changed, indent=1))
    partial.replace(export)  # complete files appear by rename, as in every inbox
    pulled_path.write_text(json.dumps(pulled, indent=1))
    print(f"review: {len(changed)} annotated tasks pulled into {export}")
    return export


def bootstrap(
    client: LabelStudio, config: ProcessingConfig, engine: sa.Engine, folder: Path, run_id: str
) -> dict[str, int]:
    """A new customer's unlabeled invoices as review tasks pre-filled by the champion: each file of `folder`
    (left in place) goes through ingest, render and the service like production, then to review whatever its
    confidence, and is pushed. Files already processed are not read again."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"no files to bootstrap in {folder}")
    staging = config.root / "bootstrap" / run_id.replace(":", "-")
    staging.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, staging / path.name)
    wanted = {sha256_file(path) for path in files}
    todo = processing.ingest(dataclasses.replace(config, inbox=staging), engine, run_id)
    shutil.rmtree(staging)  # ingest moved every copy into documents/
    shas = [sha for sha in todo if sha in wanted]
    read = processing.extract(config, engine, processing.render(config, engine, shas), run_id)
    routed = processing.route(config, engine, read, run_id, always_review="bootstrap: label by correcting")
    pushed = push(client, config, read)
    return {"files": len(files), **routed, **pushed}


# ---------------------------------------------------------------- the reviewers' summary


def _values(result: list[dict[str, Any]]) -> dict[str, str]:
    """Field name → the text of a textarea result (first line set), as Label Studio stores it."""
    values = {}
    for item in result:
        text = item.get("value", {}).get("text")
        if item.get("type") == "textarea" and text:
            values[item["from_name"]] = "\n".join(str(t) for t in text).strip()
    return values


def summary(tasks: list[dict[str, Any]], champion_version: str | None = None) -> dict[str, Any]:
    """Queue length, corrections per field, and per field how often the model was right (the reviewer kept
    its value) among reviewed tasks; with `champion_version`, only tasks the champion read count as right."""
    queue = [t for t in tasks if not any(not a.get("was_cancelled") for a in t.get("annotations", []))]
    corrected: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    reviewed: Counter[str] = Counter()
    for task in tasks:
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if not annotations or not task.get("predictions"):
            continue
        prediction = task["predictions"][0]
        version = str(prediction.get("model_version", ""))
        if champion_version and not version.endswith(f"/{champion_version}"):
            continue
        final = _values(max(annotations, key=lambda a: a.get("updated_at") or "")["result"])
        predicted = _values(prediction["result"])
        for name in FIELDS:
            if name not in final and name not in predicted:
                continue
            reviewed[name] += 1
            if final.get(name) == predicted.get(name):
                kept[name] += 1
            else:
                corrected[name] += 1
    return {
        "tasks": len(tasks),
        "queue": len(queue),
        "reviewed": len(tasks) - len(queue),
        "corrections": dict(corrected),
        "model_right": {name: round(kept[name] / reviewed[name], 3) for name in FIELDS if reviewed[name]},
        "champion_version": champion_version,
    }


def summary_table(report: dict[str, Any]) -> Table:
    """The summary as reviewers read it: one row per field."""
    scope = f"champion version {report['champion_version']}" if report["champion_version"] else "all versions"
    table = Table(
        title=f"Review queue: {report['queue']} waiting, {report['reviewed']} reviewed ({scope})",
        caption="model right = the reviewer kept the model's value",
    )
    for column in ("field", "corrections", "model right"):
        table.add_column(column, justify="left" if column == "field" else "right")
    for name in FIELDS:
        right = report["model_right"].get(name)
        table.add_row(name, str(report["corrections"].get(name, 0)), "-" if right is None else f"{right:.0%}")
    return table
