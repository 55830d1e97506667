"""Normalisers and arithmetic rules of the canonical schema."""

from decimal import Decimal

import pytest

from training.schema import (
    LabelError,
    arithmetic_problems,
    normalize_currency,
    normalize_date,
    normalize_label,
    normalize_money,
    parse_amount,
)


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        ("$1,234.56", "1234.56"),
        ("1.234,56 €", "1234.56"),
        ("1 234,56", "1234.56"),
        ("1'234.56", "1234.56"),
        ("(12.00)", "-12.00"),
        ("1,234", "1234.00"),
        ("12,5", "12.50"),
        ("RM 15.90", "15.90"),
        (4.11, "4.11"),
        ("1.234.567,89", "1234567.89"),
        ("0.015", "0.02"),
    ],
)
def test_amounts_in_every_locale_form(printed, expected):
    assert normalize_money(printed) == expected


def test_three_decimal_unit_price_is_not_a_thousands_mark():
    assert parse_amount("0.015") == Decimal("0.015")


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        ("2026-12-04", "2026-12-04"),
        ("04.12.2026", "2026-12-04"),
        ("Dec 4, 2026", "2026-12-04"),
        ("4 December 2026", "2026-12-04"),
        ("4 déc. 2026", "2026-12-04"),
        ("4. Dezember 2026", "2026-12-04"),
        ("04/12/26", "2026-12-04"),
        ("13/02/2018", "2018-02-13"),
    ],
)
def test_dates_in_every_locale_form(printed, expected):
    assert normalize_date(printed) == expected


def test_month_first_dates():
    assert normalize_date("12/04/2026", day_first=False) == "2026-12-04"


@pytest.mark.parametrize("bad", ["", "31.02.2026", "next tuesday", None])
def test_impossible_dates_are_rejected(bad):
    with pytest.raises(LabelError):
        normalize_date(bad)


def test_currency_symbols_and_unknown_codes():
    assert normalize_currency("€") == "EUR"
    assert normalize_currency("usd") == "USD"
    with pytest.raises(LabelError, match="ISO 4217"):
        normalize_currency("XYZ")


def test_normalize_label_fills_missing_fields_and_names_the_bad_one():
    label = normalize_label({"vendor_name": " ACME ", "total": "$1,000.50", "invoice_date": "Dec 4, 2026"})
    assert (
        label["vendor_name"] == "ACME"
        and label["total"] == "1000.50"
        and label["invoice_date"] == "2026-12-04"
    )
    assert label["due_date"] is None and label["line_items"] is None
    with pytest.raises(LabelError, match=r"^tax"):
        normalize_label({"tax": "lots"})


def test_arithmetic_problems_are_found_only_where_all_parts_exist():
    good = {
        "subtotal": "100.00",
        "tax": "19.00",
        "total": "119.00",
        "line_items": [{"quantity": "2", "unit_price": "50.00", "amount": "100.00"}],
    }
    assert arithmetic_problems(good) == []
    assert arithmetic_problems({**good, "total": "120.00"}) == ["subtotal 100.00 + tax 19.00 != total 120.00"]
    wrong_line = {**good, "line_items": [{"quantity": "3", "unit_price": "50.00", "amount": "100.00"}]}
    assert arithmetic_problems(wrong_line) == ["line 1: 3 x 50.00 != 100.00"]
    assert arithmetic_problems({"total": "5.00", "tax": None, "subtotal": "1.00"}) == []
