"""Scoring extracted invoices: exact match per field, field F1, Donut's TED accuracy, by slice.

Rules: fields that are null in the label are not scored (real sources leave fields unlabeled); vendor and
customer names compare case-insensitively on `[a-z0-9]`; amounts compare as decimals; dates as ISO dates.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import zss

from training.data import METADATA, read_split
from training.schema import (
    DATE_FIELDS,
    FIELDS,
    LINE_ITEM_FIELDS,
    LINE_NUMBER_FIELDS,
    MONEY_FIELDS,
    SCALAR_FIELDS,
    LabelError,
    normalize_date,
    normalize_label,
)

NAME_FIELDS = ("vendor_name", "customer_name")


@dataclass
class Example:
    """A labeled page to score: image path, canonical label, slice metadata."""

    image: Path
    label: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


def load_examples(folder: Path) -> list[Example]:
    """A Donut split (`metadata.jsonl` + images) or a `labels.jsonl` + `images/` folder."""
    folder = Path(folder)
    if (folder / METADATA).exists():
        return [Example(folder / r.file_name, r.gt_parse, r.meta) for r in read_split(folder)]
    labels = folder / "labels.jsonl"
    if not labels.exists():
        raise FileNotFoundError(f"{folder} has neither {METADATA} (a Donut split) nor labels.jsonl")
    examples = []
    for line in labels.read_text(encoding="utf-8").splitlines():
        if line.strip():
            raw = json.loads(line)
            meta = {"source": raw.get("source", folder.name), "id": raw.get("id")}
            examples.append(Example(folder / raw["image"], normalize_label(raw["fields"]), meta))
    return examples


def _comparable(name: str, value: Any) -> Any:
    """The form in which two values of a field are compared."""
    if value is None:
        return None
    text = str(value).strip()
    if name in NAME_FIELDS:
        return re.sub(r"[^a-z0-9]", "", text.lower())
    if name in MONEY_FIELDS or name in LINE_NUMBER_FIELDS:
        try:
            return Decimal(text.replace(",", ""))
        except InvalidOperation:
            return text
    if name in DATE_FIELDS:
        try:
            return normalize_date(text)
        except LabelError:
            return text
    if name == "currency":
        return text.upper()
    return text


def field_correct(name: str, predicted: Any, expected: Any) -> bool:
    """Whether a predicted field value counts as the labeled one."""
    if name == "line_items":
        if not isinstance(predicted, list) or len(predicted) != len(expected):
            return False
        return all(
            _comparable(key, p.get(key)) == _comparable(key, e.get(key))
            for p, e in zip(predicted, expected, strict=True)
            for key in LINE_ITEM_FIELDS
            if e.get(key) is not None
        )
    return _comparable(name, predicted) == _comparable(name, expected)


# ---------------------------------------------------------------- Donut's tree edit distance


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance of two strings (characters inserted, removed or replaced)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def _tree(value: Any, label: str = "<root>") -> zss.Node:
    node = zss.Node(label)
    if isinstance(value, dict):
        for key in sorted(value):
            if value[key] not in (None, "", []):
                node.addkid(_tree(value[key], key))
    elif isinstance(value, list):
        for item in value:
            node.addkid(_tree(item, "<subtree>"))
    else:
        node.addkid(zss.Node(f"<leaf>{value}"))
    return node


def _leaf(label: str) -> str | None:
    return label[len("<leaf>") :] if label.startswith("<leaf>") else None


def _insert_remove_cost(node: zss.Node) -> int:
    text = _leaf(node.label)
    return len(text) if text is not None else 1


def _update_cost(a: zss.Node, b: zss.Node) -> int:
    text_a, text_b = _leaf(a.label), _leaf(b.label)
    if text_a is not None and text_b is not None:
        return edit_distance(text_a, text_b)
    if text_a is not None or text_b is not None:
        return _insert_remove_cost(a) + _insert_remove_cost(b)
    return int(a.label != b.label)


def _distance(a: Any, b: Any) -> float:
    return zss.distance(
        _tree(a),
        _tree(b),
        get_children=zss.Node.get_children,
        insert_cost=_insert_remove_cost,
        remove_cost=_insert_remove_cost,
        update_cost=_update_cost,
    )


def ted_accuracy(predicted: dict[str, Any], expected: dict[str, Any]) -> float:
    """donut-python's normalised tree-edit-distance accuracy: 1 - TED(pred, gt) / TED({}, gt), floored at 0.
    Fields null in the label are dropped from the prediction too (they are unlabeled, not absent)."""
    scored = {k: v for k, v in predicted.items() if expected.get(k) is not None}
    reference = {k: v for k, v in expected.items() if v is not None}
    worst = _distance({}, reference)
    return 1.0 if worst == 0 else max(0.0, 1 - float(_distance(scored, reference)) / worst)


# ---------------------------------------------------------------- aggregate scores


def score(
    predictions: list[dict[str, Any]], labels: list[dict[str, Any]], sequences: list[str] | None = None
) -> dict[str, Any]:
    """`{n, per_field: {field: {accuracy, support}}, f1, ted_accuracy, distinct_share}` over documents."""
    correct: dict[str, int] = defaultdict(int)
    support: dict[str, int] = defaultdict(int)
    predicted_count = 0
    for predicted, expected in zip(predictions, labels, strict=True):
        for name in FIELDS:
            if expected.get(name) is None:
                continue
            support[name] += 1
            predicted_count += predicted.get(name) is not None
            correct[name] += field_correct(name, predicted.get(name), expected[name])
    true_positive, labeled = sum(correct.values()), sum(support.values())
    precision = true_positive / predicted_count if predicted_count else 0.0
    recall = true_positive / labeled if labeled else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(labels)
    distinct = sequences if sequences is not None else [json.dumps(p, sort_keys=True) for p in predictions]
    return {
        "n": n,
        "per_field": {
            name: {"accuracy": round(correct[name] / support[name], 4), "support": support[name]}
            for name in FIELDS
            if support[name]
        },
        "f1": round(f1, 4),
        "ted_accuracy": round(
            sum(ted_accuracy(p, e) for p, e in zip(predictions, labels, strict=True)) / n, 4
        )
        if n
        else 0.0,
        "distinct_share": round(len(set(distinct)) / n, 4) if n else 0.0,
    }


def score_by_slice(
    predictions: list[dict[str, Any]], examples: list[Example], keys: tuple[str, ...] = ("source", "layout")
) -> dict[str, Any]:
    """The same scores per value of each slice key present in the examples' metadata."""
    slices: dict[str, Any] = {}
    for key in keys:
        groups: dict[str, list[int]] = defaultdict(list)
        for index, example in enumerate(examples):
            if example.meta.get(key) is not None:
                groups[str(example.meta[key])].append(index)
        for value, indices in sorted(groups.items()):
            slices[f"{key}={value}"] = score(
                [predictions[i] for i in indices], [examples[i].label for i in indices]
            )
    return slices


def mean_field_accuracy(scores: dict[str, Any], fields: tuple[str, ...] = SCALAR_FIELDS) -> float:
    """Mean exact match over the scored fields: the early-stopping and gate criterion."""
    values = [scores["per_field"][f]["accuracy"] for f in fields if f in scores["per_field"]]
    return round(sum(values) / len(values), 4) if values else 0.0


def flat_scores(scores: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """MLflow metric names for a scores dict: `f1`, `ted_accuracy`, `accuracy_total`, ..."""
    metrics = {f"{prefix}{k}": float(v) for k, v in scores.items() if isinstance(v, int | float) and k != "n"}
    metrics.update(
        {f"{prefix}accuracy_{field}": v["accuracy"] for field, v in scores.get("per_field", {}).items()}
    )
    return metrics
