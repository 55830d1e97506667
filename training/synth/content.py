"""What a synthetic invoice says: parties, items, consistent arithmetic, and how a locale prints it."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from training.schema import MONTH_NAMES, quantize_money


@dataclass(frozen=True)
class Locale:
    """How one market prints dates, amounts and invoice vocabulary."""

    name: str
    currency: str
    symbol: str
    symbol_after: bool
    thousands: str
    decimal: str
    date_formats: tuple[str, ...]
    tax_rates: tuple[str, ...]
    words: dict[str, str]
    cities: tuple[tuple[str, str], ...]
    company_suffixes: tuple[str, ...]
    street_words: tuple[str, ...]
    address_style: str = "number_first"
    month_names: tuple[str, ...] = ()


_EN_WORDS = {
    "invoice": "INVOICE",
    "invoice_no": "Invoice No.",
    "date": "Invoice Date",
    "due": "Due Date",
    "bill_to": "Bill To",
    "description": "Description",
    "qty": "Qty",
    "unit_price": "Unit Price",
    "amount": "Amount",
    "subtotal": "Subtotal",
    "tax": "Tax",
    "total": "Total",
    "po": "PO Number",
    "customer_no": "Customer No.",
    "phone": "Phone",
    "bank": "Bank details",
    "vat_id": "VAT ID",
    "thanks": "Thank you for your business.",
    "terms": "Payment due within {days} days.",
    "page": "Page 1 of 1",
    "order_date": "Order Date",
}

LOCALES: tuple[Locale, ...] = (
    Locale(
        "en_US",
        "USD",
        "$",
        False,
        ",",
        ".",
        ("%b {d}, %Y", "%m/%d/%Y", "{B} {d}, %Y"),
        ("0.0725", "0.0825", "0.06", "0"),
        _EN_WORDS,
        (
            ("New York", "NY 10001"),
            ("Austin", "TX 78701"),
            ("Denver", "CO 80202"),
            ("Seattle", "WA 98101"),
            ("Chicago", "IL 60601"),
            ("Boston", "MA 02108"),
        ),
        ("Inc.", "LLC", "Corp.", "Co."),
        ("Main St", "Oak Ave", "Market St", "Pine Rd", "Elm Blvd", "Lake Dr"),
        month_names=MONTH_NAMES["en"],
    ),
    Locale(
        "en_GB",
        "GBP",
        "£",
        False,
        ",",
        ".",
        ("%d/%m/%Y", "{d} {B} %Y", "%d %b %Y"),
        ("0.20", "0.05", "0"),
        {**_EN_WORDS, "tax": "VAT", "bill_to": "Invoice To"},
        (
            ("London", "EC1A 1BB"),
            ("Leeds", "LS1 4DY"),
            ("Bristol", "BS1 5TR"),
            ("Glasgow", "G1 2FF"),
            ("York", "YO1 7HH"),
        ),
        ("Ltd", "PLC", "LLP"),
        ("High Street", "Station Road", "Church Lane", "Mill Road", "Park Avenue"),
        month_names=MONTH_NAMES["en"],
    ),
    Locale(
        "de_DE",
        "EUR",
        "€",
        True,
        ".",
        ",",
        ("%d.%m.%Y", "{d}. {B} %Y"),
        ("0.19", "0.07"),
        {
            "invoice": "RECHNUNG",
            "invoice_no": "Rechnungsnr.",
            "date": "Rechnungsdatum",
            "due": "Fällig am",
            "bill_to": "Rechnungsempfänger",
            "description": "Bezeichnung",
            "qty": "Menge",
            "unit_price": "Einzelpreis",
            "amount": "Betrag",
            "subtotal": "Zwischensumme",
            "tax": "MwSt.",
            "total": "Gesamtbetrag",
            "po": "Bestellnr.",
            "customer_no": "Kundennr.",
            "phone": "Tel.",
            "bank": "Bankverbindung",
            "vat_id": "USt-IdNr.",
            "thanks": "Vielen Dank für Ihren Auftrag.",
            "terms": "Zahlbar innerhalb von {days} Tagen.",
            "page": "Seite 1 von 1",
            "order_date": "Bestelldatum",
        },
        (
            ("Berlin", "10115"),
            ("München", "80331"),
            ("Hamburg", "20095"),
            ("Köln", "50667"),
            ("Leipzig", "04109"),
        ),
        ("GmbH", "AG", "KG", "GmbH & Co. KG"),
        ("Hauptstraße", "Bahnhofstraße", "Gartenweg", "Lindenallee", "Schulstraße"),
        address_style="number_after",
        month_names=MONTH_NAMES["de"],
    ),
    Locale(
        "fr_FR",
        "EUR",
        "€",
        True,
        " ",
        ",",
        ("%d/%m/%Y", "{d} {B} %Y"),
        ("0.20", "0.10", "0.055"),
        {
            "invoice": "FACTURE",
            "invoice_no": "Facture n°",
            "date": "Date de facture",
            "due": "Échéance",
            "bill_to": "Facturé à",
            "description": "Désignation",
            "qty": "Qté",
            "unit_price": "Prix unitaire",
            "amount": "Montant",
            "subtotal": "Total HT",
            "tax": "TVA",
            "total": "Total TTC",
            "po": "Bon de commande",
            "customer_no": "N° client",
            "phone": "Tél.",
            "bank": "Coordonnées bancaires",
            "vat_id": "N° TVA",
            "thanks": "Merci pour votre confiance.",
            "terms": "Paiement à {days} jours.",
            "page": "Page 1/1",
            "order_date": "Date de commande",
        },
        (
            ("Paris", "75002"),
            ("Lyon", "69002"),
            ("Lille", "59000"),
            ("Nantes", "44000"),
            ("Bordeaux", "33000"),
        ),
        ("SARL", "SAS", "SA"),
        ("rue de la Paix", "avenue Victor Hugo", "boulevard Voltaire", "rue du Moulin"),
        month_names=MONTH_NAMES["fr"],
    ),
    Locale(
        "de_CH",
        "CHF",
        "CHF",
        False,
        "'",
        ".",
        ("%d.%m.%Y",),
        ("0.081", "0.026"),
        {
            "invoice": "RECHNUNG",
            "invoice_no": "Rechnung Nr.",
            "date": "Datum",
            "due": "Zahlbar bis",
            "bill_to": "Kunde",
            "description": "Beschreibung",
            "qty": "Anz.",
            "unit_price": "Preis",
            "amount": "Total",
            "subtotal": "Total exkl. MWST",
            "tax": "MWST",
            "total": "Total inkl. MWST",
            "po": "Auftrag",
            "customer_no": "Kunden-Nr.",
            "phone": "Tel.",
            "bank": "Bank",
            "vat_id": "MWST-Nr.",
            "thanks": "Besten Dank.",
            "terms": "Zahlbar innert {days} Tagen.",
            "page": "Seite 1/1",
            "order_date": "Auftragsdatum",
        },
        (("Zürich", "8001"), ("Bern", "3011"), ("Basel", "4051"), ("Luzern", "6003")),
        ("AG", "GmbH"),
        ("Bahnhofstrasse", "Seestrasse", "Dorfstrasse"),
        address_style="number_after",
    ),
    Locale(
        "sv_SE",
        "SEK",
        "kr",
        True,
        " ",
        ",",
        ("%Y-%m-%d",),
        ("0.25", "0.12"),
        {
            "invoice": "FAKTURA",
            "invoice_no": "Fakturanr",
            "date": "Fakturadatum",
            "due": "Förfallodatum",
            "bill_to": "Kund",
            "description": "Beskrivning",
            "qty": "Antal",
            "unit_price": "À-pris",
            "amount": "Belopp",
            "subtotal": "Netto",
            "tax": "Moms",
            "total": "Att betala",
            "po": "Er referens",
            "customer_no": "Kundnr",
            "phone": "Tel",
            "bank": "Bankgiro",
            "vat_id": "Momsreg.nr",
            "thanks": "Tack för din beställning.",
            "terms": "Betalningsvillkor {days} dagar.",
            "page": "Sida 1 av 1",
            "order_date": "Orderdatum",
        },
        (("Stockholm", "111 52"), ("Göteborg", "411 01"), ("Malmö", "211 20"), ("Uppsala", "753 10")),
        ("AB", "HB"),
        ("Storgatan", "Kungsgatan", "Drottninggatan"),
        address_style="number_after",
    ),
    Locale(
        "en_IN",
        "INR",
        "₹",
        False,
        ",",
        ".",
        ("%d-%m-%Y", "%d %b %Y"),
        ("0.18", "0.12", "0.05"),
        {**_EN_WORDS, "tax": "GST", "vat_id": "GSTIN", "invoice": "TAX INVOICE"},
        (("Mumbai", "400001"), ("Bengaluru", "560001"), ("Pune", "411001"), ("Chennai", "600001")),
        ("Pvt. Ltd.", "LLP", "Ltd."),
        ("MG Road", "Park Street", "Brigade Road", "Linking Road"),
        month_names=MONTH_NAMES["en"],
    ),
    Locale(
        "en_CA",
        "CAD",
        "CA$",
        False,
        ",",
        ".",
        ("%Y-%m-%d", "%b {d}, %Y"),
        ("0.13", "0.05", "0.15"),
        {**_EN_WORDS, "tax": "HST"},
        (
            ("Toronto", "ON M5H 2N2"),
            ("Vancouver", "BC V6B 1A1"),
            ("Ottawa", "ON K1P 5J2"),
            ("Calgary", "AB T2P 1J9"),
        ),
        ("Inc.", "Ltd.", "Corp."),
        ("King St W", "Bay St", "Granville St", "Rideau St"),
        month_names=MONTH_NAMES["en"],
    ),
)

_NAME_PARTS = (
    (
        "Nord",
        "Blue",
        "Summit",
        "Alpen",
        "Cedar",
        "Silver",
        "Nova",
        "Atlas",
        "Maple",
        "Harbor",
        "Iron",
        "Bright",
        "Quantum",
        "Green",
        "Delta",
        "Pioneer",
        "Orbit",
        "Falcon",
        "Granite",
        "Vista",
        "Solar",
        "Crystal",
        "Kestrel",
    ),
    (
        "tech",
        "line",
        "works",
        "soft",
        "data",
        "print",
        "logic",
        "wave",
        "form",
        "craft",
        "point",
        "stone",
        "field",
        "bridge",
        "gate",
        "trade",
        "labs",
        "ware",
        "mark",
        "flow",
    ),
    (
        "Solutions",
        "Systems",
        "Consulting",
        "Supplies",
        "Services",
        "Trading",
        "Digital",
        "Logistics",
        "Studio",
        "Partners",
        "Industries",
        "Media",
        "Group",
        "",
    ),
)
_PEOPLE = (
    "Anna Schmidt",
    "John Miller",
    "Marie Dubois",
    "Lars Nilsson",
    "Priya Sharma",
    "Emma Brown",
    "Lukas Weber",
    "Sofia Rossi",
    "David Chen",
    "Olivia Martin",
    "Noah Wilson",
    "Chloé Bernard",
)
_ITEMS = (
    ("Consulting hours", "h", 60, 220),
    ("Software licence (annual)", "", 90, 2400),
    ("Laptop stand", "", 15, 80),
    ("Printer paper A4, 500 sheets", "", 3, 12),
    ("Cloud hosting - monthly", "", 20, 900),
    ("Website maintenance", "h", 40, 150),
    ("Office chair", "", 80, 600),
    ("USB-C cable 2m", "", 4, 25),
    ("Graphic design", "h", 35, 140),
    ("Translation services", "", 50, 800),
    ("Toner cartridge black", "", 25, 140),
    ("Training workshop", "", 300, 3000),
    ("Support plan", "", 49, 499),
    ("Monitor 27 inch", "", 150, 650),
    ("Coffee beans 1kg", "", 12, 40),
    ("Delivery fee", "", 5, 60),
    ("SSD 1TB", "", 50, 180),
    ("Project management", "h", 50, 160),
    ("Cleaning service", "", 60, 400),
    ("Desk lamp LED", "", 18, 90),
    ("Domain renewal", "", 8, 40),
    ("Keyboard, wireless", "", 20, 120),
    ("Server rack rental", "", 100, 1500),
    ("Photography session", "", 150, 900),
    ("Data migration", "h", 70, 200),
    ("Shipping boxes (set of 20)", "", 10, 45),
    ("Security audit", "", 500, 5000),
)
_INVOICE_NUMBER_FORMATS = (
    "INV-{y}-{n:05d}",
    "{n:06d}",
    "RE-{y}{n:04d}",
    "F{y}/{n:04d}",
    "{n}",
    "{p}{n:07d}",
    "INV{n:08d}",
    "{y}-{n:04d}-{p}",
)


@dataclass
class Party:
    name: str
    address_lines: list[str]


@dataclass
class InvoiceContent:
    """One synthetic invoice: the label (canonical values) and what the page prints for each."""

    locale: Locale
    vendor: Party
    customer: Party
    invoice_number: str
    invoice_date: dt.date
    due_date: dt.date | None
    items: list[dict[str, Decimal | str]]
    tax_rate: Decimal
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    show_customer: bool
    show_line_math: bool
    distractors: dict[str, str] = field(default_factory=dict)

    def label(self) -> dict[str, Any]:
        """The canonical label: only what the page actually shows."""
        return {
            "vendor_name": self.vendor.name,
            "vendor_address": ", ".join(self.vendor.address_lines),
            "customer_name": self.customer.name if self.show_customer else None,
            "invoice_number": self.invoice_number,
            "invoice_date": self.invoice_date.isoformat(),
            "due_date": self.due_date.isoformat() if self.due_date else None,
            "currency": self.locale.currency,
            "subtotal": quantize_money(self.subtotal),
            "tax": quantize_money(self.tax),
            "total": quantize_money(self.total),
            "line_items": [
                {
                    "description": str(item["description"]),
                    "quantity": format(item["quantity"].normalize(), "f") if self.show_line_math else None,
                    "unit_price": quantize_money(item["unit_price"]) if self.show_line_math else None,
                    "amount": quantize_money(item["amount"]),
                }
                for item in self.items
            ],
        }

    def money(self, value: Decimal, with_symbol: bool = True) -> str:
        """Print an amount the way this locale does (`1.234,56 €`, `$1,234.56`)."""
        return format_money(value, self.locale, with_symbol)

    def date(self, value: dt.date, style: int) -> str:
        """Print a date in one of the locale's formats."""
        return format_date(value, self.locale, style)


def format_money(value: Decimal, locale: Locale, with_symbol: bool = True) -> str:
    """Locale-specific amount string."""
    sign = "-" if value < 0 else ""
    integer, _, fraction = quantize_money(abs(value)).partition(".")
    groups = []
    while len(integer) > 3:
        groups.insert(0, integer[-3:])
        integer = integer[:-3]
    groups.insert(0, integer)
    number = f"{sign}{locale.thousands.join(groups)}{locale.decimal}{fraction}"
    if not with_symbol:
        return number
    return f"{number} {locale.symbol}" if locale.symbol_after else f"{locale.symbol}{number}"


def format_date(value: dt.date, locale: Locale, style: int) -> str:
    """Locale-specific date string; `{d}` is the day without padding, `{B}` the local month name."""
    pattern = locale.date_formats[style % len(locale.date_formats)]
    month = locale.month_names[value.month - 1] if locale.month_names else value.strftime("%B")
    return value.strftime(pattern.replace("{d}", str(value.day)).replace("{B}", month))


def _company(rng: random.Random, locale: Locale) -> str:
    first, second, third = (rng.choice(part) for part in _NAME_PARTS)
    return " ".join(part for part in (f"{first}{second}", third, rng.choice(locale.company_suffixes)) if part)


def _address(rng: random.Random, locale: Locale) -> list[str]:
    street, number = rng.choice(locale.street_words), rng.randint(1, 250)
    city, postcode = rng.choice(locale.cities)
    line1 = f"{street} {number}" if locale.address_style == "number_after" else f"{number} {street}"
    line2 = f"{city}, {postcode}" if locale.name in ("en_US", "en_CA") else f"{postcode} {city}"
    return [line1, line2]


def _iban(rng: random.Random, locale: Locale) -> str:
    country = {"de_DE": "DE", "fr_FR": "FR", "de_CH": "CH", "sv_SE": "SE", "en_GB": "GB"}.get(
        locale.name, "NL"
    )
    digits = "".join(str(rng.randint(0, 9)) for _ in range(18))
    return f"{country}{rng.randint(10, 99)} " + " ".join(digits[i : i + 4] for i in range(0, 18, 4))


def _phone(rng: random.Random) -> str:
    return f"+{rng.randint(1, 49)} {rng.randint(100, 999)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"


def random_invoice(rng: random.Random, max_items: int = 20) -> InvoiceContent:
    """Draw one invoice with consistent arithmetic: amount = qty x unit price, total = subtotal + tax."""
    locale = rng.choice(LOCALES)
    n_items = min(max_items, rng.choice((1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20)))
    items = []
    for description, unit, low, high in rng.sample(_ITEMS, k=min(n_items, len(_ITEMS))) + [
        rng.choice(_ITEMS) for _ in range(max(0, n_items - len(_ITEMS)))
    ]:
        quantity = (
            Decimal(rng.choice((1, 1, 1, 2, 3, 4, 5, 10, 12, 25)))
            if unit != "h"
            else Decimal(rng.randint(2, 80)) / 2
        )
        unit_price = Decimal(rng.randint(low * 100, high * 100)) / 100
        items.append(
            {
                "description": description,
                "quantity": quantity,
                "unit_price": unit_price,
                "amount": Decimal(quantize_money(quantity * unit_price)),
            }
        )
    subtotal = sum((item["amount"] for item in items), Decimal(0))
    tax_rate = Decimal(rng.choice(locale.tax_rates))
    tax = Decimal(quantize_money(subtotal * tax_rate))
    invoice_date = dt.date(2019, 1, 1) + dt.timedelta(days=rng.randint(0, 365 * 7))
    year = invoice_date.year
    number_format = rng.choice(_INVOICE_NUMBER_FORMATS)
    invoice_number = number_format.format(
        y=year, n=rng.randint(1, 9_999_999) % (10 ** rng.randint(3, 7)), p=rng.choice("ABCDEFGHKMNPRSTX")
    )
    distractors = {
        "po": f"PO-{rng.randint(10000, 99999)}",
        "customer_no": f"{rng.randint(100000, 999999)}",
        "phone": _phone(rng),
        "iban": _iban(rng, locale),
        "vat_id": f"{locale.name[-2:]}{rng.randint(100000000, 999999999)}",
        "order_date": format_date(invoice_date - dt.timedelta(days=rng.randint(1, 30)), locale, 0),
    }
    return InvoiceContent(
        locale=locale,
        vendor=Party(_company(rng, locale), _address(rng, locale)),
        customer=Party(rng.choice((_company(rng, locale), rng.choice(_PEOPLE))), _address(rng, locale)),
        invoice_number=invoice_number,
        invoice_date=invoice_date,
        due_date=invoice_date + dt.timedelta(days=rng.choice((14, 30, 45, 60)))
        if rng.random() < 0.75
        else None,
        items=items,
        tax_rate=tax_rate,
        subtotal=subtotal,
        tax=tax,
        total=subtotal + tax,
        show_customer=rng.random() < 0.9,
        show_line_math=rng.random() < 0.85,
        distractors=distractors,
    )
