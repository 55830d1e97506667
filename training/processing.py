"""Production processing, one function per step of the `invoice_processing` DAG: ingest the inbox, render pages,
read them through the BentoML service, validate and route, export for accounting.

Each step takes sha256s, reads and writes the results database (training/results.py) and files under
`process.root`, and is safe to re-run: documents are content-addressed and every write is an upsert. Torch-free:
it runs in Airflow's environment and reaches the model only over HTTP.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from tqdm import tqdm

from training import results
from training.config import PROJECT_ROOT, load_params, setting
from training.data import sha256_file
from training.documents import DocumentError, Limits, merge_pages
from training.schema import FIELDS, REQUIRED_FIELDS, SCALAR_FIELDS, arithmetic_problems

PARTIAL_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial")


class ServiceUnavailable(RuntimeError):
    """The extraction service did not answer in time; the documents it could not read stay retryable."""


@dataclass(frozen=True)
class ProcessingConfig:
    """Where documents live and how the service is called (params.yaml `process:`, INVOICE_* overrides)."""

    root: Path
    inbox: Path
    service_url: str
    api_key: str
    docs_per_task: int = 50
    concurrency: int = 8
    timeout_s: float = 300.0
    http_retries: int = 4
    backoff_s: float = 2.0
    min_confidence: float = 0.5

    @classmethod
    def from_params(cls) -> ProcessingConfig:
        params = load_params("process")
        root = PROJECT_ROOT / setting("INVOICE_PROCESSING_ROOT", params, "root", "var/processing")
        return cls(
            root=root,
            inbox=PROJECT_ROOT / setting("INVOICE_INBOX", params, "inbox", str(root / "inbox")),
            service_url=setting("INVOICE_SERVICE_URL", params, "service_url", "http://127.0.0.1:3000"),
            api_key=os.environ.get("INVOICE_API_KEY", ""),
            docs_per_task=setting("INVOICE_DOCS_PER_TASK", params, "docs_per_task", cls.docs_per_task),
            concurrency=setting("INVOICE_CONCURRENCY", params, "concurrency", cls.concurrency),
            timeout_s=setting("INVOICE_TIMEOUT_S", params, "timeout_s", cls.timeout_s),
            http_retries=setting("INVOICE_HTTP_RETRIES", params, "http_retries", cls.http_retries),
            backoff_s=setting("INVOICE_BACKOFF_S", params, "backoff_s", cls.backoff_s),
            min_confidence=setting("INVOICE_MIN_CONFIDENCE", params, "min_confidence", cls.min_confidence),
        )

    def folder(self, name: str) -> Path:
        """`documents`, `pages`, `quarantine`, `review` or `exports` under the root, created on first use."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def batches(items: list[str], size: int) -> list[list[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


# ---------------------------------------------------------------- ingest


def ingest(config: ProcessingConfig, engine: sa.Engine, run_id: str) -> list[str]:
    """Take every complete file out of the inbox: new bytes become `pending` documents (kept under
    documents/<sha256><suffix>), known bytes are counted as duplicates and dropped. Returns the sha256s to
    process: the new ones and those an earlier run left retryable."""
    config.inbox.mkdir(parents=True, exist_ok=True)
    store = config.folder("documents")
    new = 0
    for path in sorted(config.inbox.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() in PARTIAL_SUFFIXES:
            continue
        sha = sha256_file(path)
        suffix = re.sub(r"[^a-z0-9.]", "", path.suffix.lower())[:8]
        target = store / f"{sha}{suffix}"
        if (
            not target.exists()
        ):  # copy first: a crash before the row is written leaves the inbox file in place
            shutil.copyfile(path, target.with_suffix(".partial"))
            target.with_suffix(".partial").replace(target)
        new += results.receive(engine, sha, path.name, str(target), run_id)
        path.unlink()
    todo = [row["sha256"] for row in results.fetch(engine, status=results.RETRYABLE_STATES)]
    print(f"ingest: {new} new documents from {config.inbox}; {len(todo)} to process (incl. earlier retries)")
    return todo


# ---------------------------------------------------------------- render


def page_paths(config: ProcessingConfig, sha: str) -> list[Path]:
    return sorted((config.root / "pages" / sha).glob("page-*.png"))


def quarantine(
    config: ProcessingConfig, engine: sa.Engine, row: dict[str, Any], reason: str, message: str
) -> None:
    """Set a document aside: its bytes to quarantine/, its reason beside them and in the database."""
    source = Path(row["path"])
    target = config.folder("quarantine") / source.name
    if source.exists():
        source.replace(target)
    target.with_suffix(".reason.json").write_text(
        json.dumps(
            {"file_name": row["file_name"], "sha256": row["sha256"], "reason": reason, "message": message}
        )
    )
    results.update(
        engine, row["sha256"], status="quarantine", reason=f"{reason}: {message}", path=str(target)
    )
    print(f"quarantine: {row['file_name']} ({reason}: {message})")


def render(config: ProcessingConfig, engine: sa.Engine, shas: list[str]) -> list[str]:
    """Turn each pending document into page images (PDF pages rendered, every TIFF frame); unreadable,
    oversized or unsupported files go to quarantine. Returns the sha256s ready to read."""
    limits = Limits.from_params()
    ready = []
    for row in tqdm(results.fetch(engine, shas), desc="render", unit="doc", mininterval=5):
        if row["status"] != "pending":
            if row["status"] == "extracted":  # read by an earlier try, not yet routed
                ready.append(row["sha256"])
            continue
        if not page_paths(config, row["sha256"]):
            try:
                pages = limits.load(Path(row["path"]).read_bytes(), row["file_name"])
            except DocumentError as error:
                quarantine(config, engine, row, error.reason, error.message)
                continue
            folder = config.folder("pages") / row["sha256"]
            folder.mkdir(exist_ok=True)
            for number, page in enumerate(pages, 1):
                partial = folder / f".page-{number:03d}.png"
                page.save(partial)
                partial.replace(folder / f"page-{number:03d}.png")
        results.update(engine, row["sha256"], pages=len(page_paths(config, row["sha256"])))
        ready.append(row["sha256"])
    return ready


# ---------------------------------------------------------------- extract


def read_page(client: httpx.Client, config: ProcessingConfig, page: Path) -> dict[str, Any]:
    """POST one page to /extract, retrying connection errors, timeouts and 5xx with exponential backoff.
    Returns the service's answer, or `{"rejected": {...}}` when it refuses the page (4xx)."""
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    last_error = ""
    for attempt in range(config.http_retries + 1):
        if attempt:
            time.sleep(config.backoff_s * 2 ** (attempt - 1))
        try:
            response = client.post(
                f"{config.service_url}/extract",
                files={"file": (page.name, page.read_bytes(), "image/png")},
                headers=headers,
                timeout=config.timeout_s,
            )
        except httpx.TransportError as error:  # refused, reset, timed out
            last_error = f"{type(error).__name__}: {error}"
            continue
        if response.status_code == 200:
            return response.json()
        if response.status_code == 401:
            raise PermissionError(f"{config.service_url} refused the API key (INVOICE_API_KEY)")
        if 400 <= response.status_code < 500:
            return {"rejected": response.json()}
        last_error = f"HTTP {response.status_code}: {response.text[:200]}"
    raise ServiceUnavailable(f"{page}: no answer after {config.http_retries + 1} attempts ({last_error})")


def extract(config: ProcessingConfig, engine: sa.Engine, shas: list[str], run_id: str) -> list[str]:
    """Read every page of the rendered documents through the service, `concurrency` pages in flight so its
    adaptive batcher fills forward passes; merge each document's pages and store the reading (`extracted`).
    Raises ServiceUnavailable after the rest when some pages got no answer: those documents stay `pending`
    for Airflow's retry or the next run. Returns the sha256s read."""
    rows = [row for row in results.fetch(engine, shas) if row["status"] in results.RETRYABLE_STATES]
    done = [row["sha256"] for row in rows if row["status"] == "extracted"]
    jobs = [
        (row, page)
        for row in rows
        if row["status"] == "pending"
        for page in page_paths(config, row["sha256"])
    ]
    answers: dict[str, list[Any]] = {row["sha256"]: [] for row in rows if row["status"] == "pending"}

    def job(item: tuple[dict[str, Any], Path]) -> tuple[str, Path, Any]:
        row, page = item
        try:
            return row["sha256"], page, read_page(client, config, page)
        except ServiceUnavailable as error:
            print(f"extract: {error}")
            return row["sha256"], page, error

    with httpx.Client() as client, ThreadPoolExecutor(config.concurrency) as pool:
        for sha, page, answer in tqdm(
            pool.map(job, jobs), total=len(jobs), desc="extract", unit="page", mininterval=5
        ):
            answers[sha].append((page, answer))
    unavailable = []
    for row in (r for r in rows if r["sha256"] in answers):
        pages = [answer for _, answer in sorted(answers[row["sha256"]], key=lambda item: item[0].name)]
        if any(isinstance(answer, ServiceUnavailable) for answer in pages):
            unavailable.append(row["file_name"])
            continue
        rejected = next((answer["rejected"] for answer in pages if "rejected" in answer), None)
        if rejected or not pages:
            rejected = rejected or {"reason": "no_pages", "error": "the document has no page to read"}
            quarantine(config, engine, row, rejected.get("reason", "rejected"), rejected.get("error", ""))
            continue
        fields, confidence = merge_pages(pages)
        model = pages[-1]["model"]
        results.update(
            engine,
            row["sha256"],
            status="extracted",
            fields=fields,
            confidence=confidence,
            model_name=model["name"],
            model_version=model["version"],
            model_run_id=model["run_id"],
            data_version=model.get("data_version"),
            run_id=run_id,
        )
        done.append(row["sha256"])
    if unavailable:
        raise ServiceUnavailable(
            f"{len(unavailable)} of {len(rows)} documents got no answer from {config.service_url} and stay "
            f"pending for the retry or the next run: {', '.join(unavailable[:5])}"
        )
    return done


# ---------------------------------------------------------------- validate and route


def business_rules(fields: dict[str, Any], confidence: dict[str, float], min_confidence: float) -> list[str]:
    """What keeps a reading from going straight to accounting: missing or unsure required fields, arithmetic
    that does not add up (within a cent), an invoice dated in the future."""
    problems = [f"missing {name}" for name in REQUIRED_FIELDS if fields.get(name) is None]
    problems += [
        f"low confidence {name} ({confidence[name]:.2f} < {min_confidence})"
        for name in REQUIRED_FIELDS
        if fields.get(name) is not None and confidence.get(name, 0.0) < min_confidence
    ]
    problems += arithmetic_problems(fields)
    try:
        if fields.get("invoice_date") and dt.date.fromisoformat(fields["invoice_date"]) > dt.date.today():
            problems.append(f"invoice_date {fields['invoice_date']} is in the future")
    except ValueError:
        pass  # not an ISO date: the GX format rule reports it
    return problems


def review_task(config: ProcessingConfig, row: dict[str, Any]) -> dict[str, Any]:
    """A Label Studio task for a reviewer: the first page, the model's reading as pre-annotation (one
    TextArea per field, line items as `description | quantity | unit_price | amount` rows)."""
    fields, confidence = row["fields"] or {}, row["confidence"] or {}

    def text(name: str) -> str | None:
        value = fields.get(name)
        if name == "line_items":
            cells = ("description", "quantity", "unit_price", "amount")
            return (
                "\n".join(" | ".join(str(item.get(c) or "") for c in cells) for item in value)
                if value
                else None
            )
        return value

    pages = [str(path.relative_to(config.root)) for path in page_paths(config, row["sha256"])]
    result = [
        {
            "from_name": name,
            "to_name": "image",
            "type": "textarea",
            "value": {"text": [text(name)]},
            "score": confidence.get(name),
        }
        for name in FIELDS
        if text(name) is not None
    ]
    return {
        "data": {
            "image": f"/data/local-files/?d={pages[0]}" if pages else None,
            "pages": pages,
            "doc_id": row["sha256"],
            "file_name": row["file_name"],
            "reasons": row["reason"],
        },
        "predictions": [
            {
                "model_version": f"{row['model_name']}/{row['model_version']}",
                "score": min(confidence.values(), default=0.0),
                "result": result,
            }
        ],
    }


def route(
    config: ProcessingConfig,
    engine: sa.Engine,
    shas: list[str],
    run_id: str,
    always_review: str | None = None,
) -> dict[str, int]:
    """Validate the readings (the GX format suite over the batch plus business rules per document) and
    move each to `stored` or, with its reasons and a Label Studio task under review/, to `review`.
    `always_review` (a reason) sends every document to review, e.g. a new customer's first invoices."""
    from training.validate import validate_predictions

    rows = [row for row in results.fetch(engine, shas) if row["status"] == "extracted"]
    problems: dict[int, list[str]] = {
        i: business_rules(row["fields"], row["confidence"] or {}, config.min_confidence)
        + ([always_review] if always_review else [])
        for i, row in enumerate(rows)
    }
    for rule, outcome in validate_predictions([row["fields"] for row in rows], mostly=1.0).items():
        for index in outcome["docs"]:
            problems[index].append(f"{rule} failed")
    routed = {"stored": 0, "review": 0}
    for index, row in enumerate(rows):
        status = "review" if problems[index] else "stored"
        results.update(
            engine,
            row["sha256"],
            status=status,
            checks=problems[index],
            reason="; ".join(problems[index]) or None,
            run_id=run_id,
        )
        if status == "review":
            task = review_task(config, {**row, "reason": "; ".join(problems[index])})
            (config.folder("review") / f"{row['sha256']}.json").write_text(json.dumps(task, indent=1))
        routed[status] += 1
    print(f"route: {routed['stored']} stored, {routed['review']} to review")
    return routed


# ---------------------------------------------------------------- export and report


def export(config: ProcessingConfig, engine: sa.Engine, run_id: str) -> dict[str, str]:
    """The run's stored invoices for accounting: invoices.json (whole records with lineage), invoices.csv (one
    row per invoice) and line_items.csv, under exports/<run id>/; re-running rewrites the same files."""
    folder = config.folder("exports") / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    folder.mkdir(exist_ok=True)
    lineage = ("model_name", "model_version", "model_run_id", "data_version")
    rows = results.fetch(engine, status=["stored"], run_id=run_id)
    records = [
        {
            "sha256": r["sha256"],
            "file_name": r["file_name"],
            **(r["fields"] or {}),
            **{k: r[k] for k in lineage},
        }
        for r in rows
    ]
    (folder / "invoices.json").write_text(json.dumps(records, indent=1, default=str))
    with (folder / "invoices.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, ["sha256", "file_name", *SCALAR_FIELDS, *lineage], extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(records)
    with (folder / "line_items.csv").open("w", newline="") as handle:
        cells = ["description", "quantity", "unit_price", "amount"]
        writer = csv.DictWriter(handle, ["sha256", "line", *cells], extrasaction="ignore")
        writer.writeheader()
        for record in records:
            for number, item in enumerate(record.get("line_items") or [], 1):
                writer.writerow({"sha256": record["sha256"], "line": number, **item})
    print(f"export: {len(records)} invoices to {folder}")
    return {"folder": str(folder), "invoices": len(records)}


def report(engine: sa.Engine, shas: list[str], run_id: str) -> dict[str, Any]:
    """Where this run's documents ended; raises when some are still retryable, so the run shows failed."""
    states: dict[str, int] = {}
    for row in results.fetch(engine, shas):
        states[row["status"]] = states.get(row["status"], 0) + 1
    print(f"run {run_id}: {json.dumps(states)}; overall {json.dumps(results.counts(engine))}")
    left = sum(states.get(state, 0) for state in results.RETRYABLE_STATES)
    if left:
        raise ServiceUnavailable(f"{left} documents were left retryable; the next run picks them up")
    return states
