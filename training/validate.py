"""Great Expectations suite over a labeled dataset in Donut's layout.

Every document becomes one row (labels flattened, image probed, arithmetic checked) and every line item
another, so that each rule is a plain GX expectation whose failures name the file. Structural problems that
stop a row from existing at all (a metadata line that is not JSON) are reported under the same rule format.
"""

from __future__ import annotations

import html
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tqdm import tqdm

from training.config import from_section
from training.data import METADATA, SPLITS, DatasetError, iter_split, sha256_file
from training.schema import (
    DATE_FIELDS,
    DECIMAL_PATTERN,
    FIELDS,
    ISO_4217,
    LINE_ITEM_FIELDS,
    MONEY_FIELDS,
    MONEY_PATTERN,
    REQUIRED_FIELDS,
    SCALAR_FIELDS,
    arithmetic_problems,
)


@dataclass(frozen=True)
class Rules:
    """Thresholds of the suite (params.yaml `validate:`)."""

    required_fields: tuple[str, ...] = REQUIRED_FIELDS
    min_side_px: int = 200
    max_side_px: int = 10_000
    max_pixels: int = 40_000_000
    max_bytes: int = 20_000_000
    image_suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Rules:
        return from_section(cls, params)


@dataclass
class Failure:
    rule: str
    file: str
    detail: str


@dataclass
class ValidationReport:
    documents: int
    line_items: int
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "documents": self.documents,
            "line_items": self.line_items,
            "rules": self.rules,
            "failures": [asdict(f) for f in self.failures],
        }


def probe_image(path: Path, rules: Rules) -> tuple[str, int, int]:
    """`(error or "", width, height)`; checks size from the header before decoding, so bombs are never loaded."""
    if not path.is_file():
        return "image file missing", 0, 0
    size = path.stat().st_size
    if size == 0:
        return "empty file", 0, 0
    if size > rules.max_bytes:
        return f"{size} bytes is over {rules.max_bytes}", 0, 0
    if path.suffix.lower() not in rules.image_suffixes:
        return f"{path.suffix or 'no suffix'} is not an image type ({', '.join(rules.image_suffixes)})", 0, 0
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > rules.max_pixels:
                return f"{width}x{height} pixels is over {rules.max_pixels}", width, height
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"unreadable image: {error}", 0, 0
    return "", width, height


def _text(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else json.dumps(value)


def profile(
    dataset: Path, rules: Rules, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, list[Failure]]:
    """One row per document and per line item, plus failures that stop a row from existing."""
    docs, items, structural = [], [], []
    splits = [s for s in SPLITS if (dataset / s).is_dir()]
    if not splits:
        structural.append(Failure("dataset_layout", str(dataset), f"no split folder ({', '.join(SPLITS)})"))
    lines = [(s, n, item) for s in splits for n, item in iter_split(dataset / s)]
    for split in splits:
        if not (dataset / split / METADATA).exists():
            structural.append(Failure("dataset_layout", f"{split}/{METADATA}", "missing"))
    for split, number, record in tqdm(lines, desc="profiling documents", unit="doc", disable=not progress):
        if isinstance(record, DatasetError):
            structural.append(Failure("metadata_json", f"{split}/{METADATA}:{number}", str(record)))
            continue
        doc = f"{split}/{record.file_name}"
        label = record.gt_parse
        image = dataset / split / record.file_name
        error, width, height = probe_image(image, rules)
        row: dict[str, Any] = {
            "doc": doc,
            "split": split,
            "doc_id": record.doc_id,
            "unknown_keys": ", ".join(sorted(set(label) - set(FIELDS))),
            "missing_keys": ", ".join(f for f in FIELDS if f not in label),
            "arithmetic": "; ".join(arithmetic_problems(label))
            if isinstance(label.get("line_items") or [], list)
            else "line_items is not a list",
            # A broken image fails `image_readable`; leaving its size unknown keeps `image_size` about size.
            "image_error": error,
            "width": width if not error else None,
            "height": height if not error else None,
            "sha256": sha256_file(image) if image.is_file() else None,
        }
        row.update({f: _text(label.get(f)) for f in SCALAR_FIELDS})
        docs.append(row)
        line_items = label.get("line_items") or []
        for index, item in enumerate(line_items if isinstance(line_items, list) else []):
            item = item if isinstance(item, dict) else {}
            items.append(
                {"doc": f"{doc}#line{index + 1}", **{k: _text(item.get(k)) for k in LINE_ITEM_FIELDS}}
            )
    docs_frame = pd.DataFrame(
        docs,
        columns=[
            "doc",
            "split",
            "doc_id",
            "unknown_keys",
            "missing_keys",
            "arithmetic",
            "image_error",
            "width",
            "height",
            "sha256",
            *SCALAR_FIELDS,
        ],
    )
    # How many splits hold each image content: an image in two splits leaks test data into training.
    docs_frame["splits_with_image"] = docs_frame.groupby("sha256")["split"].transform("nunique").fillna(1)
    items_frame = pd.DataFrame(items, columns=["doc", *LINE_ITEM_FIELDS])
    return docs_frame, items_frame, structural


def document_expectations(rules: Rules) -> list[Any]:
    """The suite over documents; `meta.rule` names each rule in reports."""
    import great_expectations.expectations as E

    def rule(name: str, **details: Any) -> dict[str, Any]:
        return {"rule": name, **details}

    expectations = [
        E.ExpectColumnValuesToBeInSet(
            column="missing_keys", value_set=[""], meta=rule("canonical_keys_present")
        ),
        E.ExpectColumnValuesToBeInSet(column="unknown_keys", value_set=[""], meta=rule("no_unknown_keys")),
        *(
            E.ExpectColumnValuesToNotBeNull(column=f, meta=rule("required_field", field=f))
            for f in rules.required_fields
        ),
        *(
            E.ExpectColumnValuesToMatchStrftimeFormat(
                column=f, strftime_format="%Y-%m-%d", meta=rule("iso_date", field=f)
            )
            for f in DATE_FIELDS
        ),
        *(
            E.ExpectColumnValuesToMatchRegex(
                column=f, regex=MONEY_PATTERN, meta=rule("decimal_amount", field=f)
            )
            for f in MONEY_FIELDS
        ),
        E.ExpectColumnValuesToBeInSet(
            column="currency", value_set=sorted(ISO_4217), meta=rule("iso_4217_currency")
        ),
        E.ExpectColumnValuesToBeInSet(
            column="arithmetic", value_set=[""], meta=rule("arithmetic_consistent")
        ),
        E.ExpectColumnValuesToBeInSet(column="image_error", value_set=[""], meta=rule("image_readable")),
        E.ExpectColumnValuesToBeBetween(
            column="width",
            min_value=rules.min_side_px,
            max_value=rules.max_side_px,
            meta=rule("image_size", bounds=[rules.min_side_px, rules.max_side_px]),
        ),
        E.ExpectColumnValuesToBeBetween(
            column="height",
            min_value=rules.min_side_px,
            max_value=rules.max_side_px,
            meta=rule("image_size", bounds=[rules.min_side_px, rules.max_side_px]),
        ),
        E.ExpectColumnValuesToBeUnique(column="doc_id", meta=rule("unique_id")),
        E.ExpectColumnValuesToBeBetween(
            column="splits_with_image", max_value=1, meta=rule("image_in_one_split")
        ),
    ]
    return expectations


def line_item_expectations() -> list[Any]:
    import great_expectations.expectations as E

    return [
        E.ExpectColumnValuesToNotBeNull(column="description", meta={"rule": "line_item_description"}),
        *(
            E.ExpectColumnValuesToMatchRegex(
                column=f, regex=DECIMAL_PATTERN, meta={"rule": "decimal_amount", "field": f}
            )
            for f in ("quantity", "unit_price")
        ),
        E.ExpectColumnValuesToMatchRegex(
            column="amount", regex=MONEY_PATTERN, meta={"rule": "decimal_amount", "field": "amount"}
        ),
    ]


def run_suite(name: str, frame: pd.DataFrame, expectations: list[Any]) -> list[Any]:
    """Validate a dataframe with GX and return its expectation results."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    asset = context.data_sources.add_pandas(name).add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(name).get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=f"labeled_invoices.{name}")
    for expectation in expectations:
        suite.add_expectation(expectation)
    result = batch.validate(
        suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["doc"]}
    )
    return list(result.results)


def _detail(rule: str, row: dict[str, Any], docs: pd.DataFrame) -> str:
    """Why a row failed, in words: the value, or the reason column that explains it."""
    doc = row["doc"]
    value = next((v for k, v in row.items() if k != "doc"), None)
    if rule == "image_in_one_split":
        sha = docs.loc[docs["doc"] == doc, "sha256"].iloc[0]
        twins = sorted(set(docs.loc[docs["sha256"] == sha, "doc"]) - {doc})
        return f"same image content as {', '.join(twins)}"
    if rule == "unique_id":
        return f"id {value!r} is used by more than one document"
    return "missing (null)" if value is None else f"value {value!r}"


def validate_dataset(dataset: Path, rules: Rules | None = None, progress: bool = True) -> ValidationReport:
    """Run the suite; the report lists every failing (rule, file) with its reason."""
    rules = rules or Rules()
    dataset = Path(dataset)
    docs, items, structural = profile(dataset, rules, progress)
    report = ValidationReport(documents=len(docs), line_items=len(items), failures=list(structural))
    rule_counts: dict[str, dict[str, Any]] = defaultdict(lambda: {"checked": 0, "failed": 0})
    for name, frame, expectations in (
        ("documents", docs, document_expectations(rules)),
        ("line_items", items, line_item_expectations()),
    ):
        if frame.empty:
            continue
        for result in run_suite(name, frame, expectations):
            meta = result.expectation_config.meta or {}
            rule = meta["rule"] + (f"[{meta['field']}]" if "field" in meta else "")
            rows = result.result.get("unexpected_index_list") or []
            rule_counts[rule]["checked"] += len(frame)
            rule_counts[rule]["failed"] += len(rows)
            rule_counts[rule]["expectation"] = result.expectation_config.type
            for row in rows:
                report.failures.append(Failure(rule, row["doc"], _detail(meta["rule"], row, docs)))
    for failure in structural:
        rule_counts[failure.rule]["failed"] += 1
    # The reason column says more than "value is not ''": replace it for the computed-column rules.
    reasons = {
        "image_readable": "image_error",
        "arithmetic_consistent": "arithmetic",
        "canonical_keys_present": "missing_keys",
        "no_unknown_keys": "unknown_keys",
    }
    by_doc = docs.set_index("doc") if not docs.empty else None
    for failure in report.failures:
        if failure.rule in reasons and by_doc is not None:
            failure.detail = str(by_doc.at[failure.file, reasons[failure.rule]])
    report.failures.sort(key=lambda f: (f.file, f.rule))
    report.rules = dict(sorted(rule_counts.items()))
    return report


def write_report(report: ValidationReport, dataset: Path, report_dir: Path) -> tuple[Path, Path]:
    """Write `validation.json` and a readable `validation.html`; returns both paths."""
    report_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = report_dir / "validation.json", report_dir / "validation.html"
    json_path.write_text(
        json.dumps({"dataset": str(dataset), **report.as_dict()}, indent=2), encoding="utf-8"
    )
    status = "PASSED" if report.success else f"FAILED: {len(report.failures)} problem(s)"
    rule_rows = "".join(
        f"<tr class='{'bad' if r['failed'] else 'ok'}'><td>{html.escape(name)}</td><td>{r.get('checked', '')}</td>"
        f"<td>{r['failed']}</td></tr>"
        for name, r in report.rules.items()
    )
    failure_rows = "".join(
        f"<tr><td>{html.escape(f.rule)}</td><td>{html.escape(f.file)}</td><td>{html.escape(f.detail)}</td></tr>"
        for f in report.failures
    )
    html_path.write_text(
        f"""<!doctype html><meta charset="utf-8"><title>Validation of {html.escape(str(dataset))}</title>
<style>body{{font:14px sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} .bad td{{background:#fde2e2}} .ok td{{background:#e6f4ea}}</style>
<h1>Labeled-data validation: {status}</h1>
<p>Dataset <code>{html.escape(str(dataset))}</code>: {report.documents} documents, {report.line_items} line items.</p>
<h2>Rules</h2><table><tr><th>rule</th><th>rows checked</th><th>failed</th></tr>{rule_rows}</table>
<h2>Failures</h2><table><tr><th>rule</th><th>file</th><th>reason</th></tr>{failure_rows or "<tr><td colspan=3>none</td></tr>"}</table>
""",
        encoding="utf-8",
    )
    return json_path, html_path


def validate_predictions(predictions: list[dict[str, Any]], mostly: float) -> dict[str, dict[str, Any]]:
    """GX over a model's answers: dates parse as ISO dates, amounts are decimals, currencies are ISO 4217
    codes, each for at least a `mostly` share of the values present (missing values are accuracy's business).
    Returns `{rule: {success, checked, failed, examples, docs}}`, `docs` being the failing answers' indexes."""
    import great_expectations.expectations as E

    frame = pd.DataFrame(
        [{"doc": str(i), **{f: _text(p.get(f)) for f in SCALAR_FIELDS}} for i, p in enumerate(predictions)],
        columns=["doc", *SCALAR_FIELDS],
    )
    expectations = [
        *(
            E.ExpectColumnValuesToMatchStrftimeFormat(
                column=f, strftime_format="%Y-%m-%d", mostly=mostly, meta={"rule": f"iso_date[{f}]"}
            )
            for f in DATE_FIELDS
        ),
        *(
            E.ExpectColumnValuesToMatchRegex(
                column=f, regex=MONEY_PATTERN, mostly=mostly, meta={"rule": f"decimal_amount[{f}]"}
            )
            for f in MONEY_FIELDS
        ),
        E.ExpectColumnValuesToBeInSet(
            column="currency", value_set=sorted(ISO_4217), mostly=mostly, meta={"rule": "iso_4217_currency"}
        ),
    ]
    outcome = {}
    for result in run_suite("predictions", frame, expectations):
        rule = result.expectation_config.meta["rule"]
        column = result.expectation_config.kwargs["column"]
        unexpected = result.result.get("unexpected_list") or []
        outcome[rule] = {
            "success": bool(result.success),
            "checked": int(frame[column].notna().sum()),
            "failed": len(unexpected),
            "examples": [str(v) for v in unexpected[:5]],
            "docs": sorted({int(row["doc"]) for row in result.result.get("unexpected_index_list") or []}),
        }
    return outcome
