"""Evaluation rules: what counts as a correct field, F1, TED accuracy, the constant-output detector."""

from __future__ import annotations

import json

import pytest

from training.evaluate import (
    field_correct,
    load_examples,
    mean_field_accuracy,
    score,
    score_by_slice,
    ted_accuracy,
)
from training.schema import empty_label

LABEL = {
    **empty_label(),
    "vendor_name": "ACME GmbH",
    "invoice_date": "2026-12-04",
    "total": "1234.50",
    "currency": "EUR",
    "line_items": [{"description": "Widget", "quantity": "2", "unit_price": "617.25", "amount": "1234.50"}],
}


def test_comparison_rules():
    assert field_correct("vendor_name", "acme gmbh.", "ACME GmbH")
    assert field_correct("total", "1,234.5", "1234.50")
    assert field_correct("invoice_date", "04.12.2026", "2026-12-04")
    assert field_correct("currency", "eur", "EUR")
    assert not field_correct("total", "1234.51", "1234.50")
    assert not field_correct("invoice_number", "inv-1", "INV-1")
    assert field_correct(
        "line_items",
        [{"description": "Widget", "quantity": "2.0", "unit_price": "617.25", "amount": "1234.5"}],
        LABEL["line_items"],
    )


def test_perfect_predictions_score_one():
    scores = score([LABEL, LABEL], [LABEL, LABEL])
    assert scores["f1"] == 1.0 and scores["ted_accuracy"] == 1.0
    assert scores["per_field"]["total"] == {"accuracy": 1.0, "support": 2}
    assert "due_date" not in scores["per_field"], "null label fields are not scored"
    assert scores["distinct_share"] == 0.5


def test_unlabeled_fields_are_skipped_not_counted_wrong():
    label = {**empty_label(), "total": "5.00"}
    prediction = {**empty_label(), "total": "5.00", "vendor_name": "Something"}
    scores = score([prediction], [label])
    assert scores["f1"] == 1.0 and ted_accuracy(prediction, label) == 1.0


def test_partial_and_empty_predictions():
    wrong_total = {**LABEL, "total": "1234.00"}
    scores = score([wrong_total, empty_label()], [LABEL, LABEL])
    assert scores["per_field"]["total"]["accuracy"] == 0.0
    assert scores["per_field"]["vendor_name"]["accuracy"] == 0.5
    assert 0 < scores["f1"] < 1
    assert 0 < ted_accuracy(wrong_total, LABEL) < 1
    assert ted_accuracy(empty_label(), LABEL) == 0.0
    assert mean_field_accuracy(scores) == pytest.approx((0.5 + 0.5 + 0.0 + 0.5) / 4)


def test_slices_and_realdata_layout(realdata):
    examples = load_examples(realdata / "parsee")
    assert len(examples) == 7 and all(e.image.exists() for e in examples)
    assert examples[0].label["currency"] in {"USD", "EUR"}
    slices = score_by_slice([e.label for e in examples], examples)
    assert slices["source=parsee"]["f1"] == 1.0


def test_donut_split_layout(generated):
    examples = load_examples(generated / "test")
    assert len(examples) == 4 and examples[0].meta["layout"]
    assert json.dumps(examples[0].label)
