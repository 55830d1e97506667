"""The synthetic invoice generator: determinism, arithmetic, variety, and labels that pass the schema."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections import Counter
from decimal import Decimal
from pathlib import Path

import numpy as np
import pypdfium2
import pytest
from PIL import Image

from training.data import SPLITS, read_split
from training.schema import FIELDS, arithmetic_problems, normalize_label
from training.synth.content import LOCALES, format_date, format_money, random_invoice
from training.synth.generate import GeneratorConfig, generate_dataset, make_invoice
from training.synth.render import LAYOUTS, random_style


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def all_records(root: Path):
    return [(split, r) for split in SPLITS for r in read_split(root / split)]


def test_same_seed_gives_byte_identical_dataset(generated, small_config, tmp_path):
    again = tmp_path / "again"
    generate_dataset(
        small_config, again, workers=1, progress=False
    )  # serial, where the fixture ran in parallel
    assert tree_digest(again) == tree_digest(generated)


def test_another_seed_gives_other_invoices(small_config):
    first = make_invoice(small_config, 0)
    other = make_invoice(GeneratorConfig(n=small_config.n, seed=small_config.seed + 1), 0)
    assert first.label != other.label


def test_layout_of_splits_and_metadata(generated, small_config):
    records = all_records(generated)
    assert Counter(split for split, _ in records) == {"train": 32, "validation": 4, "test": 4}
    for split, record in records:
        assert (generated / split / record.file_name).is_file()
        assert record.meta["source"] == "synthetic" and record.meta["layout"] in LAYOUTS


def test_every_label_passes_the_schema_and_the_arithmetic(generated):
    for _, record in all_records(generated):
        label = record.gt_parse
        assert list(label) == list(FIELDS)
        assert normalize_label(label) == label, "labels are already canonical"
        assert arithmetic_problems(label) == []
        assert 1 <= len(label["line_items"]) <= 20
        amounts = sum(Decimal(item["amount"]) for item in label["line_items"])
        assert amounts == Decimal(label["subtotal"])
        assert Decimal(label["subtotal"]) + Decimal(label["tax"]) == Decimal(label["total"])


def test_arithmetic_holds_over_many_invoices():
    """Content alone (no rendering) keeps this fast while covering 400 draws."""
    for index in range(400):
        label = random_invoice(random.Random(f"3:{index}")).label()
        assert arithmetic_problems(label) == [], label


def test_variety_of_layouts_locales_currencies_and_fonts():
    config = GeneratorConfig(n=200, seed=11, degrade_share=0.0)
    layouts, locales, currencies, fonts, item_counts = Counter(), Counter(), Counter(), Counter(), Counter()
    for index in range(200):
        rng = random.Random(f"{config.seed}:{index}")
        content = random_invoice(rng)
        layouts[rng.choice(config.layouts)] += 1
        locales[content.locale.name] += 1
        currencies[content.locale.currency] += 1
        fonts[random_style(content, rng).family.name] += 1
        item_counts[len(content.items)] += 1
    assert len(layouts) >= 6 and len(locales) >= 6 and len(currencies) >= 5 and len(fonts) >= 5
    assert min(item_counts) == 1 and max(item_counts) == 20


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_prints_its_values(layout):
    """Every family renders a readable page of plausible size; the label's values come from the content."""
    invoice = make_invoice(GeneratorConfig(n=1, seed=5, layouts=(layout,), degrade_share=0.0), 0)
    width, height = invoice.image.size
    assert 300 <= width <= 1100 and 500 <= height <= 1500
    ink = sum(1 for value in invoice.image.convert("L").getdata() if value < 128) / (width * height)
    assert 0.005 < ink < 0.3, f"{layout} page is blank or black ({ink:.3f})"
    assert invoice.meta["layout"] == layout


def test_locale_forms_of_dates_and_amounts():
    by_name = {locale.name: locale for locale in LOCALES}
    day = dt.date(2026, 12, 4)
    assert format_money(Decimal("1234.56"), by_name["en_US"]) == "$1,234.56"
    assert format_money(Decimal("1234.56"), by_name["de_DE"]) == "1.234,56 €"
    assert format_money(Decimal("1234.56"), by_name["fr_FR"]) == "1 234,56 €"
    assert format_date(day, by_name["de_DE"], 0) == "04.12.2026"
    assert format_date(day, by_name["en_US"], 0) == "Dec 4, 2026"


def test_scanned_pages_are_degraded_jpegs(generated):
    records = all_records(generated)
    scanned = [(s, r) for s, r in records if r.meta["scanned"]]
    clean = [(s, r) for s, r in records if not r.meta["scanned"]]
    assert scanned and clean
    assert all(r.file_name.endswith(".jpg") for _, r in scanned)
    assert all(r.file_name.endswith(".png") for _, r in clean)


def test_pdf_twins_open_as_one_page_documents(generated):
    pdfs = [(s, r) for s, r in all_records(generated) if r.meta.get("pdf")]
    assert pdfs
    for split, record in pdfs:
        document = pypdfium2.PdfDocument(generated / split / record.meta["pdf"])
        assert len(document) == 1
        page = document[0].render(scale=0.5).to_pil()
        assert page.size[0] > 100
        document.close()


def test_images_decode(generated):
    for split, record in all_records(generated):
        with Image.open(generated / split / record.file_name) as image:
            image.load()


def test_transcript_holds_the_printed_values_in_reading_order():
    invoice = make_invoice(GeneratorConfig(n=1, seed=3, layouts=("classic",), degrade_share=0.0), 0)
    text = invoice.meta["text"]
    assert invoice.label["invoice_number"] in text and invoice.label["vendor_name"] in text
    lines = text.splitlines()
    assert lines[0].startswith(invoice.label["vendor_name"])
    assert text.index(invoice.label["invoice_number"]) < text.index(
        invoice.label["line_items"][0]["description"]
    )


def test_line_boxes_hold_one_run_of_text_each():
    """The reading guidance places a line's characters evenly across its box: a box must not span a row's
    columns (a gap wider than the box is tall would be one)."""
    invoice = make_invoice(GeneratorConfig(n=1, seed=3, layouts=("classic",), degrade_share=0.0), 0)
    page = np.asarray(invoice.image.convert("L")) < 128
    lines = invoice.meta["lines"]
    assert "\n".join(line[4] for line in lines) == invoice.meta["text"]
    for top, left, bottom, right, text in lines:
        ink = page[top:bottom, left:right].any(axis=0)
        assert ink.any(), text
        gaps = np.diff(np.flatnonzero(ink))
        assert gaps.max(initial=0) < bottom - top, (text, gaps.max())
