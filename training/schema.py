"""Canonical invoice fields and the normalisers that turn printed values into them.

Every label in the project (synthetic, imported, reviewed) and every model output uses these fields:
dates are ISO `YYYY-MM-DD`, amounts are decimal strings, currencies are ISO 4217 codes.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

SCALAR_FIELDS: tuple[str, ...] = (
    "vendor_name",
    "vendor_address",
    "customer_name",
    "invoice_number",
    "invoice_date",
    "due_date",
    "currency",
    "subtotal",
    "tax",
    "total",
)
LINE_ITEM_FIELDS: tuple[str, ...] = ("description", "quantity", "unit_price", "amount")
FIELDS: tuple[str, ...] = (*SCALAR_FIELDS, "line_items")
# What a label must have to be worth training on: every real source labels at least these.
REQUIRED_FIELDS: tuple[str, ...] = ("vendor_name", "invoice_date", "total")
DATE_FIELDS: tuple[str, ...] = ("invoice_date", "due_date")
MONEY_FIELDS: tuple[str, ...] = ("subtotal", "tax", "total")
LINE_NUMBER_FIELDS: tuple[str, ...] = ("quantity", "unit_price", "amount")

# Active ISO 4217 codes (2026). Kept inline so that validation needs no network and no extra package.
ISO_4217: frozenset[str] = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD
    CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF
    GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP
    LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB
    PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL
    THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW
    ZWG""".split()
)

MONEY_PATTERN = r"^-?\d+\.\d{2}$"
DECIMAL_PATTERN = r"^-?\d+(?:\.\d+)?$"
ISO_DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
CENT = Decimal("0.01")

# Month names the generator prints and the date parser reads.
MONTH_NAMES: dict[str, tuple[str, ...]] = {
    "en": (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
    "de": (
        "Januar",
        "Februar",
        "März",
        "April",
        "Mai",
        "Juni",
        "Juli",
        "August",
        "September",
        "Oktober",
        "November",
        "Dezember",
    ),
    "fr": (
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ),
}
_FRENCH_ABBREVIATIONS = (
    "janv",
    "févr",
    "mars",
    "avr",
    "mai",
    "juin",
    "juil",
    "août",
    "sept",
    "oct",
    "nov",
    "déc",
)


def _month_numbers() -> dict[str, int]:
    """Full names and abbreviations (the usual ones, and the first three letters) to month numbers."""
    numbers: dict[str, int] = {}
    for names in (*MONTH_NAMES.values(), _FRENCH_ABBREVIATIONS):
        for number, name in enumerate(names, 1):
            numbers[name.lower()] = number
            numbers.setdefault(name.lower()[:3], number)
    return numbers


_MONTHS = _month_numbers()


class LabelError(ValueError):
    """A value that cannot be turned into its canonical form."""


def empty_label() -> dict[str, Any]:
    """A label with every canonical field present and unknown (null)."""
    return {field: None for field in FIELDS}


def quantize_money(value: Decimal) -> str:
    """Format a decimal as a two-decimal money string (`1234.50`)."""
    return str(value.quantize(CENT, rounding=ROUND_HALF_UP))


def parse_amount(raw: str | float | int | Decimal) -> Decimal:
    """Parse a printed amount in any common locale form into a Decimal.

    Handles `$1,234.56`, `1.234,56 €`, `1 234,56`, `1'234.56`, `(12.00)` and a trailing or leading minus.
    With both `.` and `,` present the right-most one is the decimal point.
    """
    if isinstance(raw, Decimal):
        return raw
    if isinstance(raw, bool):
        raise LabelError(f"not an amount: {raw!r}")
    if isinstance(raw, int | float):
        return Decimal(str(raw))
    if not isinstance(raw, str):
        raise LabelError(f"not an amount: {raw!r}")
    text = raw.strip()
    negative = (text.startswith("(") and text.endswith(")")) or text.startswith("-") or text.endswith("-")
    digits = re.sub(r"[^\d.,]", "", text)
    if not re.search(r"\d", digits):
        raise LabelError(f"not an amount: {raw!r}")
    separators = [m.start() for m in re.finditer(r"[.,]", digits)]
    kinds = {digits[i] for i in separators}
    last = separators[-1] if separators else len(digits)
    fraction = digits[last + 1 :]
    # One separator before exactly three digits is a thousands mark (`1.234`), unless the integer part is 0.
    is_decimal = len(kinds) == 2 or (
        len(separators) == 1 and (len(fraction) != 3 or digits[:last] in ("", "0"))
    )
    if is_decimal:
        number = re.sub(r"[.,]", "", digits[:last]) + "." + fraction
    else:
        number = re.sub(r"[.,]", "", digits)
    try:
        value = Decimal(number)
    except InvalidOperation as error:
        raise LabelError(f"not an amount: {raw!r}") from error
    return -value if negative else value


def normalize_money(raw: str | float | int | Decimal) -> str:
    """Canonical two-decimal money string for any printed amount."""
    return quantize_money(parse_amount(raw))


def normalize_decimal(raw: str | float | int | Decimal, min_places: int = 0) -> str:
    """Canonical decimal string with no trailing zeros beyond `min_places` (`2.50` -> `2.5`, unit prices keep 2)."""
    value = parse_amount(raw).normalize()
    if -value.as_tuple().exponent < min_places:
        value = value.quantize(Decimal(1).scaleb(-min_places))
    return format(value, "f")


def parse_date(raw: str, day_first: bool = True) -> dt.date:
    """Parse a printed date (`2026-12-04`, `04.12.2026`, `12/04/2026`, `Dec 4, 2026`, `4 déc. 2026`)."""
    if not isinstance(raw, str) or not raw.strip():
        raise LabelError(f"not a date: {raw!r}")
    text = raw.strip().lower()
    try:
        if re.fullmatch(r"\d{4}-\d{1,2}-\d{1,2}", text):
            return dt.date(*map(int, text.split("-")))
        numeric = re.fullmatch(r"(\d{1,2})[./-](\d{1,2})[./-](\d{2}|\d{4})", text)
        if numeric:
            first, second, year = (int(g) for g in numeric.groups())
            year = year + 2000 if year < 100 else year
            day, month = (first, second) if day_first else (second, first)
            if month > 12 and day <= 12:
                day, month = month, day
            return dt.date(year, month, day)
        words = re.findall(r"[^\W\d_]+\.?|\d+", text)
        numbers = [int(w) for w in words if w.isdigit()]
        months = [
            _MONTHS.get(w.rstrip(".")) or _MONTHS.get(w.rstrip(".")[:3]) for w in words if not w.isdigit()
        ]
        months = [m for m in months if m]
        if len(numbers) == 2 and months:
            day, year = (numbers[0], numbers[1]) if numbers[1] > 31 else (numbers[1], numbers[0])
            return dt.date(year, months[0], day)
    except ValueError as error:
        raise LabelError(f"not a date: {raw!r} ({error})") from error
    raise LabelError(f"not a date: {raw!r}")


def normalize_date(raw: str, day_first: bool = True) -> str:
    """Canonical ISO date string for any printed date."""
    return parse_date(raw, day_first=day_first).isoformat()


def normalize_currency(raw: str) -> str:
    """Canonical ISO 4217 code for a code or a common symbol."""
    symbols = {
        "$": "USD",
        "US$": "USD",
        "€": "EUR",
        "£": "GBP",
        "¥": "JPY",
        "₹": "INR",
        "RM": "MYR",
        "KR": "SEK",
        "FR.": "CHF",
    }
    code = str(raw).strip().upper()
    code = symbols.get(code, code)
    if code not in ISO_4217:
        raise LabelError(f"not an ISO 4217 currency: {raw!r}")
    return code


def canonical_label(fields: dict[str, Any]) -> dict[str, Any]:
    """Project an arbitrary field dict onto the canonical fields (unknown keys dropped, missing ones null)."""
    label = empty_label()
    for field in SCALAR_FIELDS:
        value = fields.get(field)
        label[field] = None if value in ("", None) else value
    items = fields.get("line_items")
    if items:
        label["line_items"] = [{key: item.get(key) for key in LINE_ITEM_FIELDS} for item in items]
    return label


def normalize_label(fields: dict[str, Any], day_first: bool = True) -> dict[str, Any]:
    """Canonical label with every present value normalised; raises LabelError naming the bad field."""
    label = canonical_label(fields)
    normalisers = {
        **dict.fromkeys(DATE_FIELDS, lambda v: normalize_date(v, day_first)),
        **dict.fromkeys(MONEY_FIELDS, normalize_money),
        "currency": normalize_currency,
    }
    for field, normalise in normalisers.items():
        if label[field] is not None:
            try:
                label[field] = normalise(label[field])
            except LabelError as error:
                raise LabelError(f"{field}: {error}") from error
    for field in ("vendor_name", "vendor_address", "customer_name", "invoice_number"):
        if label[field] is not None:
            label[field] = str(label[field]).strip()
    for index, item in enumerate(label["line_items"] or []):
        for key in LINE_NUMBER_FIELDS:
            if item[key] not in (None, ""):
                try:
                    item[key] = LINE_NORMALISERS[key](item[key])
                except LabelError as error:
                    raise LabelError(f"line_items[{index}].{key}: {error}") from error
            else:
                item[key] = None
    return label


LINE_NORMALISERS = {
    "quantity": normalize_decimal,
    "unit_price": lambda raw: normalize_decimal(raw, min_places=2),
    "amount": normalize_money,
}


def _decimal_or_none(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def arithmetic_problems(label: dict[str, Any], tolerance: Decimal = CENT) -> list[str]:
    """Arithmetic rules that fail, checked only where every part of a rule is present."""
    problems = []
    subtotal, tax, total = (_decimal_or_none(label.get(f)) for f in MONEY_FIELDS)
    if None not in (subtotal, tax, total) and abs(subtotal + tax - total) > tolerance:
        problems.append(f"subtotal {subtotal} + tax {tax} != total {total}")
    items = label.get("line_items") or []
    amounts = []
    for index, item in enumerate(items):
        quantity, unit_price, amount = (_decimal_or_none(item.get(k)) for k in LINE_NUMBER_FIELDS)
        amounts.append(amount)
        if None not in (quantity, unit_price, amount) and abs(quantity * unit_price - amount) > tolerance:
            problems.append(f"line {index + 1}: {quantity} x {unit_price} != {amount}")
    if items and subtotal is not None and None not in amounts:
        tolerance_sum = tolerance * max(1, len(amounts))
        if abs(sum(amounts) - subtotal) > tolerance_sum:
            problems.append(f"line amounts sum {sum(amounts)} != subtotal {subtotal}")
    return problems
