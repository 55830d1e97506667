"""Drawing invoices: a small canvas in points, shared blocks, and the layout families."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw

from training.synth.content import InvoiceContent
from training.synth.fonts import FontFamily, font_families, load_font

RGB = tuple[int, int, int]
PAPER_POINTS = {"A4": (595, 842), "Letter": (612, 792)}
ACCENTS: tuple[RGB, ...] = (
    (31, 78, 121),
    (150, 30, 45),
    (20, 110, 80),
    (90, 60, 140),
    (200, 100, 20),
    (60, 60, 60),
)


LINE_HEIGHT = 1.25  # a line's ink from its top, in multiples of the font size (ascenders to descenders)


@dataclass(frozen=True)
class TextLine:
    """One line of a page in reading order: its box in pixels (top, left, bottom, right) and its text."""

    top: int
    left: int
    bottom: int
    right: int
    text: str


@dataclass(frozen=True)
class Style:
    """Typography and colour of one page."""

    family: FontFamily
    size: float  # body size in points
    accent: RGB
    ink: RGB
    date_style: int


class Canvas:
    """A page addressed in points (1/72 inch), rendered at a given dpi."""

    def __init__(
        self,
        paper: str,
        dpi: int,
        style: Style,
        width_pt: float | None = None,
        height_pt: float | None = None,
    ) -> None:
        paper_w, paper_h = PAPER_POINTS[paper]
        self.width, self.height = width_pt or paper_w, height_pt or paper_h
        self.scale = dpi / 72
        self.style = style
        self.image = Image.new(
            "RGB", (round(self.width * self.scale), round(self.height * self.scale)), "white"
        )
        self.draw = ImageDraw.Draw(self.image)
        # (top, left, size, width, text) of every text drawn, in points
        self.spans: list[tuple[float, float, float, float, str]] = []

    def _font(self, size: float | None, bold: bool):
        path = self.style.family.bold if bold else self.style.family.regular
        return load_font(path, max(6, round((size or self.style.size) * self.scale)))

    def measure(self, text: str, size: float | None = None, bold: bool = False) -> float:
        """Width of `text` in points."""
        return self._font(size, bold).getlength(text) / self.scale

    def text(
        self,
        x: float,
        y: float,
        text: str,
        size: float | None = None,
        bold: bool = False,
        fill: RGB | None = None,
        align: str = "left",
    ) -> float:
        """Draw one line whose top is at `y`; `x` is its left, right or centre edge. Returns the next line's y."""
        size = size or self.style.size
        offset = {
            "left": 0,
            "right": self.measure(text, size, bold),
            "center": self.measure(text, size, bold) / 2,
        }
        self.draw.text(
            ((x - offset[align]) * self.scale, y * self.scale),
            text,
            font=self._font(size, bold),
            fill=fill or self.style.ink,
        )
        if text.strip():
            left = x - offset[align] + self.measure(text[: len(text) - len(text.lstrip())], size, bold)
            self.spans.append((y, left, size, self.measure(text.strip(), size, bold), text.strip()))
        return y + size * 1.35

    def text_lines(self) -> list[TextLine]:
        """The page's text in reading order with pixel boxes, one per text drawn: rows of them (tops within half
        a line), each left to right. Not merged into one line per row: columns of a row lie far apart, and the
        reading guidance places characters within a box as if equally wide. Joined by newlines, their text is
        the target of Donut's reading (pretraining) task."""
        rows: list[list[tuple[float, float, float, float, str]]] = []
        for span in sorted(self.spans):
            if rows and span[0] - rows[-1][0][0] < 0.5 * min(span[2], rows[-1][0][2]):
                rows[-1].append(span)
            else:
                rows.append([span])
        return [
            TextLine(
                *(round(v * self.scale) for v in (top, left, top + size * LINE_HEIGHT, left + width)), text
            )
            for row in rows
            for top, left, size, width, text in sorted(row, key=lambda span: span[1])
        ]

    def lines(
        self,
        x: float,
        y: float,
        lines: list[str],
        size: float | None = None,
        bold_first: bool = False,
        align: str = "left",
        fill: RGB | None = None,
    ) -> float:
        """Draw consecutive lines; returns the y below the last one."""
        for index, line in enumerate(lines):
            y = self.text(x, y, line, size, bold=bold_first and index == 0, align=align, fill=fill)
        return y

    def rule(
        self, x0: float, y0: float, x1: float, y1: float, width: float = 0.6, fill: RGB | None = None
    ) -> None:
        self.draw.line(
            [(x0 * self.scale, y0 * self.scale), (x1 * self.scale, y1 * self.scale)],
            fill=fill or self.style.ink,
            width=max(1, round(width * self.scale)),
        )

    def box(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        fill: RGB | None = None,
        outline: RGB | None = None,
        width: float = 0.6,
    ) -> None:
        self.draw.rectangle(
            [x0 * self.scale, y0 * self.scale, x1 * self.scale, y1 * self.scale],
            fill=fill,
            outline=outline,
            width=max(1, round(width * self.scale)),
        )

    def fit(self, text: str, max_width: float, size: float | None = None, bold: bool = False) -> str:
        """Truncate `text` with an ellipsis so that it fits in `max_width` points."""
        if self.measure(text, size, bold) <= max_width:
            return text
        while text and self.measure(text + "…", size, bold) > max_width:
            text = text[:-1]
        return text + "…"


def tint(color: RGB, amount: float) -> RGB:
    """Mix a colour with white (amount 1 = white)."""
    return tuple(round(c + (255 - c) * amount) for c in color)  # type: ignore[return-value]


# ---------------------------------------------------------------- shared blocks


def meta_rows(inv: InvoiceContent, style: Style, rng: random.Random) -> list[tuple[str, str]]:
    """Invoice number, dates and distractor references, in a shuffled but plausible order."""
    words = inv.locale.words
    rows = [
        (words["invoice_no"], inv.invoice_number),
        (words["date"], inv.date(inv.invoice_date, style.date_style)),
    ]
    if inv.due_date:
        rows.append((words["due"], inv.date(inv.due_date, style.date_style)))
    extras = [
        (words["po"], inv.distractors["po"]),
        (words["customer_no"], inv.distractors["customer_no"]),
        (words["order_date"], inv.distractors["order_date"]),
    ]
    rows += rng.sample(extras, k=rng.randint(0, len(extras)))
    return rows


def draw_key_values(
    c: Canvas,
    x: float,
    y: float,
    rows: list[tuple[str, str]],
    key_width: float,
    size: float | None = None,
    bold_keys: bool = True,
    align_values: str = "left",
    value_x: float | None = None,
) -> float:
    """Two aligned columns of `key: value`; returns the y below."""
    for key, value in rows:
        c.text(x, y, key, size, bold=bold_keys)
        y = c.text(value_x if value_x is not None else x + key_width, y, value, size, align=align_values)
    return y


def draw_items(c: Canvas, inv: InvoiceContent, x0: float, x1: float, y: float, look: str) -> float:
    """The line-item table in one of several looks (grid, band, zebra, plain); returns the y below it."""
    words, size = inv.locale.words, c.style.size
    row_h = size * 1.7
    if inv.show_line_math:
        headers = [words["description"], words["qty"], words["unit_price"], words["amount"]]
        widths = [0.52, 0.12, 0.18, 0.18]
    else:
        headers, widths = [words["description"], words["amount"]], [0.78, 0.22]
    span = x1 - x0
    edges = [x0]
    for fraction in widths:
        edges.append(edges[-1] + fraction * span)
    accent = c.style.accent
    if look == "band":
        c.box(x0, y, x1, y + row_h, fill=accent)
    elif look == "grid":
        c.box(x0, y, x1, y + row_h, fill=tint(accent, 0.85), outline=c.style.ink)
    header_fill = (255, 255, 255) if look == "band" else None
    for index, header in enumerate(headers):
        right = index > 0
        c.text(
            edges[index + 1] - 4 if right else edges[index] + 4,
            y + size * 0.35,
            header,
            size,
            bold=True,
            fill=header_fill,
            align="right" if right else "left",
        )
    y += row_h
    if look in ("plain", "zebra"):
        c.rule(x0, y, x1, y, width=0.8)
    for row_index, item in enumerate(inv.items):
        cells = [str(item["description"])]
        if inv.show_line_math:
            cells += [
                format(item["quantity"].normalize(), "f").replace(".", inv.locale.decimal),
                inv.money(item["unit_price"], with_symbol=False),
            ]
        cells.append(inv.money(item["amount"], with_symbol=False))
        if look == "zebra" and row_index % 2 == 0:
            c.box(x0, y, x1, y + row_h, fill=tint(accent, 0.9))
        for index, cell in enumerate(cells):
            if index == 0:
                c.text(edges[0] + 4, y + size * 0.35, c.fit(cell, edges[1] - edges[0] - 8, size), size)
            else:
                c.text(edges[index + 1] - 4, y + size * 0.35, cell, size, align="right")
        if look == "grid":
            c.box(x0, y, x1, y + row_h, outline=c.style.ink, width=0.4)
        y += row_h
    if look == "grid":
        for edge in edges[1:-1]:
            c.rule(edge, y - row_h * (len(inv.items) + 1), edge, y, width=0.4)
    else:
        c.rule(x0, y, x1, y, width=0.6)
    return y + size * 0.6


def totals_rows(inv: InvoiceContent) -> list[tuple[str, str]]:
    """Subtotal, tax (with its rate) and total as printed."""
    words = inv.locale.words
    rate = f"{(inv.tax_rate * 100).normalize():f}".replace(".", inv.locale.decimal)
    return [
        (words["subtotal"], inv.money(inv.subtotal)),
        (f"{words['tax']} {rate}%", inv.money(inv.tax)),
        (words["total"], inv.money(inv.total)),
    ]


def draw_totals(
    c: Canvas, inv: InvoiceContent, x_right: float, y: float, width: float = 200, highlight: bool = False
) -> float:
    """The totals block, right-aligned at `x_right`; returns the y below it."""
    size = c.style.size
    rows = totals_rows(inv)
    for index, (key, value) in enumerate(rows):
        last = index == len(rows) - 1
        if last and highlight:
            c.box(x_right - width, y - 2, x_right, y + size * 1.6, fill=tint(c.style.accent, 0.8))
        c.text(x_right - width + 4, y, key, size + (1 if last else 0), bold=last)
        y = c.text(x_right - 4, y, value, size + (1 if last else 0), bold=last, align="right")
    return y


def party_lines(inv: InvoiceContent, vendor: bool) -> list[str]:
    party = inv.vendor if vendor else inv.customer
    return [party.name, *party.address_lines]


def footer(c: Canvas, inv: InvoiceContent, y: float, columns: bool = True) -> None:
    """Bank, phone and tax-id distractors along the bottom."""
    words, size = inv.locale.words, c.style.size - 1.5
    d = inv.distractors
    blocks = [
        [inv.vendor.name, *inv.vendor.address_lines],
        [f"{words['phone']}: {d['phone']}", f"{words['vat_id']}: {d['vat_id']}"],
        [words["bank"], f"IBAN {d['iban']}"],
    ]
    c.rule(36, y - 6, c.width - 36, y - 6, width=0.4)
    if columns:
        for index, block in enumerate(blocks):
            c.lines(36 + index * (c.width - 72) / 3, y, block, size)
    else:
        c.lines(c.width / 2, y, [" · ".join(block) for block in blocks[1:]], size, align="center")


def terms(inv: InvoiceContent) -> str:
    days = (inv.due_date - inv.invoice_date).days if inv.due_date else 30
    return inv.locale.words["terms"].format(days=days)


# ---------------------------------------------------------------- layout families


def layout_classic(c: Canvas, inv: InvoiceContent, rng: random.Random) -> None:
    """Vendor block top-left, big title top-right, bill-to, grid table, totals bottom-right, bank footer."""
    size, words = c.style.size, inv.locale.words
    y = c.lines(40, 40, party_lines(inv, vendor=True), size, bold_first=True)
    c.text(c.width - 40, 40, words["invoice"], size * 2.2, bold=True, fill=c.style.accent, align="right")
    meta = meta_rows(inv, c.style, rng)
    draw_key_values(
        c, c.width - 250, 40 + size * 3.4, meta, 0, size, value_x=c.width - 40, align_values="right"
    )
    y = max(y, 40 + size * 3.4 + len(meta) * size * 1.35) + size * 2
    if inv.show_customer:
        c.text(40, y, words["bill_to"], size, bold=True, fill=c.style.accent)
        y = c.lines(40, y + size * 1.5, party_lines(inv, vendor=False), size) + size * 1.5
    y = draw_items(c, inv, 40, c.width - 40, y, look=rng.choice(("grid", "plain")))
    y = draw_totals(c, inv, c.width - 40, y + size, highlight=rng.random() < 0.5)
    c.text(40, y + size * 2, terms(inv), size - 1)
    footer(c, inv, c.height - 60)


def layout_banner(c: Canvas, inv: InvoiceContent, rng: random.Random) -> None:
    """A coloured band carrying the vendor name, meta in a row of boxes, banded table, totals box."""
    size, words = c.style.size, inv.locale.words
    band_h = size * 6
    c.box(0, 0, c.width, band_h, fill=c.style.accent)
    c.text(36, band_h / 2 - size * 1.1, inv.vendor.name, size * 1.7, bold=True, fill=(255, 255, 255))
    c.text(
        c.width - 36,
        band_h / 2 - size * 1.1,
        words["invoice"],
        size * 1.7,
        fill=(255, 255, 255),
        align="right",
    )
    y = c.lines(36, band_h + size, [", ".join(inv.vendor.address_lines)], size - 1)
    meta = meta_rows(inv, c.style, rng)[:4]
    cell_w = (c.width - 72) / len(meta)
    y += size
    for index, (key, value) in enumerate(meta):
        x = 36 + index * cell_w
        c.box(x + 2, y, x + cell_w - 2, y + size * 3.4, fill=tint(c.style.accent, 0.88))
        c.text(x + 8, y + size * 0.3, key, size - 1.5, bold=True)
        c.text(x + 8, y + size * 1.7, value, size)
    y += size * 5
    if inv.show_customer:
        y = c.lines(36, y, [words["bill_to"].upper(), *party_lines(inv, vendor=False)], size, bold_first=True)
        y += size
    y = draw_items(c, inv, 36, c.width - 36, y, look="band")
    y = draw_totals(c, inv, c.width - 36, y + size, width=220, highlight=True)
    c.text(36, y + size * 2, words["thanks"], size, bold=True, fill=c.style.accent)
    footer(c, inv, c.height - 50, columns=False)


def layout_letter(c: Canvas, inv: InvoiceContent, rng: random.Random) -> None:
    """DIN 5008 business letter: sender line over the address window, info block right, subject, table."""
    size, words = c.style.size, inv.locale.words
    c.text(c.width - 56, 40, inv.vendor.name, size * 1.6, bold=True, fill=c.style.accent, align="right")
    c.lines(c.width - 56, 40 + size * 2.4, inv.vendor.address_lines, size - 1, align="right")
    sender = " · ".join([inv.vendor.name, *inv.vendor.address_lines])
    c.text(56, 130, c.fit(sender, 240, size - 2.5), size - 2.5)
    c.rule(56, 130 + size, 296, 130 + size, width=0.3)
    if inv.show_customer:
        c.lines(56, 148, party_lines(inv, vendor=False), size)
    info = meta_rows(inv, c.style, rng)
    draw_key_values(c, c.width - 230, 140, info, 95, size - 0.5, bold_keys=False)
    y = 260
    title = f"{words['invoice'].capitalize()} {inv.invoice_number}"
    y = c.text(56, y, title, size * 1.3, bold=True) + size
    y = draw_items(c, inv, 56, c.width - 56, y, look=rng.choice(("plain", "zebra")))
    y = draw_totals(c, inv, c.width - 56, y + size, width=230)
    y = c.text(56, y + size * 2, terms(inv), size)
    c.text(56, y + size * 0.5, words["thanks"], size)
    footer(c, inv, c.height - 64)


def layout_receipt(c: Canvas, inv: InvoiceContent, rng: random.Random) -> None:
    """A till receipt: one narrow centred column, items as text lines, dashed rules, TOTAL in bold."""
    size, words = c.style.size, inv.locale.words
    mid, half = c.width / 2, 130
    y = c.lines(
        mid,
        30,
        [inv.vendor.name.upper(), *inv.vendor.address_lines, inv.distractors["phone"]],
        size,
        bold_first=True,
        align="center",
    )
    y = c.text(
        mid, y + size * 0.5, f"{words['vat_id']} {inv.distractors['vat_id']}", size - 1, align="center"
    )
    dash = "-" * 200
    y = c.text(mid - half, y + size * 0.5, c.fit(dash, 2 * half, size), size)
    y = c.text(mid - half, y, f"{words['invoice_no']} {inv.invoice_number}", size)
    y = c.text(
        mid - half,
        y,
        f"{words['date']}: {inv.date(inv.invoice_date, c.style.date_style)}  "
        f"{rng.randint(7, 21):02d}:{rng.randint(0, 59):02d}",
        size,
    )
    if inv.due_date:
        y = c.text(mid - half, y, f"{words['due']}: {inv.date(inv.due_date, c.style.date_style)}", size)
    if inv.show_customer:
        y = c.text(mid - half, y, f"{words['bill_to']}: {inv.customer.name}", size)
    y = c.text(mid - half, y, c.fit(dash, 2 * half, size), size)
    for item in inv.items:
        name = c.fit(str(item["description"]), 2 * half - 70, size)
        if inv.show_line_math:
            quantity = format(item["quantity"].normalize(), "f").replace(".", inv.locale.decimal)
            c.text(mid - half, y, name, size)
            y = c.text(
                mid - half + 12,
                y + size * 1.3,
                f"{quantity} x {inv.money(item['unit_price'], with_symbol=False)}",
                size - 1,
            )
            c.text(
                mid + half, y - size * 1.35, inv.money(item["amount"], with_symbol=False), size, align="right"
            )
        else:
            c.text(mid - half, y, name, size)
            y = c.text(mid + half, y, inv.money(item["amount"], with_symbol=False), size, align="right")
    y = c.text(mid - half, y, c.fit(dash, 2 * half, size), size)
    for index, (key, value) in enumerate(totals_rows(inv)):
        last = index == 2
        c.text(mid - half, y, key.upper() if last else key, size + (2 if last else 0), bold=last)
        y = c.text(mid + half, y, value, size + (2 if last else 0), bold=last, align="right")
    c.text(mid, y + size * 2, words["thanks"], size, align="center")


def layout_sidebar(c: Canvas, inv: InvoiceContent, rng: random.Random) -> None:
    """A tinted left sidebar with vendor, meta and bank details; items and totals in the main column."""
    size, words = c.style.size, inv.locale.words
    side = 170
    c.box(0, 0, side, c.height, fill=tint(c.style.accent, 0.82))
    y = c.lines(16, 40, party_lines(inv, vendor=True), size - 0.5, bold_first=True)
    y += size * 2
    for key, value in meta_rows(inv, c.style, rng):
        y = c.text(16, y, key, size - 1.5, bold=True)
        y = c.text(16, y, value, size) + size * 0.4
    y += size * 2
    d = inv.distractors
    c.lines(
        16,
        y,
        [words["bank"], c.fit(d["iban"], side - 24, size - 2), f"{words['phone']} {d['phone']}"],
        size - 2,
        bold_first=True,
    )
    x0 = side + 28
    c.text(x0, 40, words["invoice"], size * 2.6, bold=True, fill=c.style.accent)
    y = 40 + size * 5
    if inv.show_customer:
        y = c.lines(x0, y, [words["bill_to"], *party_lines(inv, vendor=False)], size, bold_first=True) + size
    y = draw_items(c, inv, x0, c.width - 30, y, look=rng.choice(("zebra", "plain")))
    y = draw_totals(c, inv, c.width - 30, y + size, width=200, highlight=rng.random() < 0.5)
    c.text(x0, y + size * 2, terms(inv), size - 1)


def layout_minimal(c: Canvas, inv: InvoiceContent, rng: random.Random) -> None:
    """Plain text document: `Key: value` lines, items as an unruled list, totals left-aligned."""
    size, words = c.style.size, inv.locale.words
    y = c.text(50, 50, f"{words['invoice'].capitalize()} — {inv.vendor.name}", size * 1.5, bold=True)
    y = c.lines(50, y + size * 0.3, inv.vendor.address_lines, size) + size
    rows = meta_rows(inv, c.style, rng)
    if inv.show_customer:
        rows.insert(rng.randint(0, len(rows)), (words["bill_to"], inv.customer.name))
    y = c.lines(50, y, [f"{key}: {value}" for key, value in rows], size) + size
    for index, item in enumerate(inv.items, 1):
        line = f"{index}. {item['description']}"
        if inv.show_line_math:
            quantity = format(item["quantity"].normalize(), "f").replace(".", inv.locale.decimal)
            line += f" — {quantity} x {inv.money(item['unit_price'])}"
        c.text(50, y, c.fit(line, c.width - 230, size), size)
        y = c.text(c.width - 50, y, inv.money(item["amount"]), size, align="right")
    y += size
    y = c.lines(50, y, [f"{key}: {value}" for key, value in totals_rows(inv)], size)
    c.text(50, y + size, terms(inv), size)
    footer(c, inv, c.height - 55, columns=rng.random() < 0.5)


def layout_boxed(c: Canvas, inv: InvoiceContent, rng: random.Random) -> None:
    """A form: every block in a bordered cell, labels small above values, items in a full grid."""
    size, words = c.style.size, inv.locale.words
    left, right = 30, c.width - 30
    mid = (left + right) / 2
    c.box(left, 30, right, 30 + size * 3, fill=tint(c.style.accent, 0.75), outline=c.style.ink)
    c.text(mid, 30 + size * 0.7, words["invoice"], size * 1.6, bold=True, align="center")
    y0 = 30 + size * 3
    block_h = size * 7
    c.box(left, y0, mid, y0 + block_h, outline=c.style.ink)
    c.box(mid, y0, right, y0 + block_h, outline=c.style.ink)
    c.text(left + 6, y0 + 4, "From", size - 2.5)
    c.lines(left + 6, y0 + size * 1.3, party_lines(inv, vendor=True), size, bold_first=True)
    c.text(mid + 6, y0 + 4, words["bill_to"], size - 2.5)
    if inv.show_customer:
        c.lines(mid + 6, y0 + size * 1.3, party_lines(inv, vendor=False), size)
    y = y0 + block_h
    meta = meta_rows(inv, c.style, rng)
    cell_w = (right - left) / len(meta)
    for index, (key, value) in enumerate(meta):
        x = left + index * cell_w
        c.box(x, y, x + cell_w, y + size * 3, outline=c.style.ink)
        c.text(x + 4, y + 3, c.fit(key, cell_w - 8, size - 2.5), size - 2.5)
        c.text(x + 4, y + size * 1.4, c.fit(value, cell_w - 8, size - 0.5), size - 0.5)
    y += size * 4
    y = draw_items(c, inv, left, right, y, look="grid")
    y = draw_totals(c, inv, right, y + size * 0.5, width=240)
    c.box(right - 240, y - size * 4.6, right, y + 2, outline=c.style.ink)
    footer(c, inv, c.height - 55)


def layout_statement(c: Canvas, inv: InvoiceContent, rng: random.Random) -> None:
    """Right-aligned letterhead, meta as a two-row table, items with hairlines, totals under a double rule."""
    size, words = c.style.size, inv.locale.words
    y = c.lines(c.width - 45, 45, party_lines(inv, vendor=True), size, bold_first=True, align="right")
    c.text(45, 45, words["invoice"].title(), size * 2.4, fill=c.style.accent)
    y = max(y, 45 + size * 4) + size
    meta = meta_rows(inv, c.style, rng)
    col_w = (c.width - 90) / len(meta)
    c.rule(45, y, c.width - 45, y, width=1.2, fill=c.style.accent)
    for index, (key, value) in enumerate(meta):
        c.text(45 + index * col_w, y + 4, c.fit(key, col_w - 6, size - 1.5), size - 1.5, bold=True)
        c.text(45 + index * col_w, y + 4 + size * 1.4, c.fit(value, col_w - 6, size), size)
    y += size * 3.6
    c.rule(45, y, c.width - 45, y, width=0.4)
    y += size
    if inv.show_customer:
        y = c.lines(45, y, party_lines(inv, vendor=False), size, bold_first=True) + size
    y = draw_items(c, inv, 45, c.width - 45, y, look="plain")
    y = draw_totals(c, inv, c.width - 45, y + size, width=210)
    c.rule(c.width - 255, y + 2, c.width - 45, y + 2, width=0.5)
    c.rule(c.width - 255, y + 4, c.width - 45, y + 4, width=0.5)
    c.text(45, y + size * 2.5, f"{words['po']}: {inv.distractors['po']}  ·  {terms(inv)}", size - 1)
    c.text(c.width - 45, c.height - 40, words["page"], size - 2, align="right")


Layout = Callable[[Canvas, InvoiceContent, random.Random], None]
LAYOUTS: dict[str, Layout] = {
    "classic": layout_classic,
    "banner": layout_banner,
    "letter": layout_letter,
    "receipt": layout_receipt,
    "sidebar": layout_sidebar,
    "minimal": layout_minimal,
    "boxed": layout_boxed,
    "statement": layout_statement,
}


def random_style(inv: InvoiceContent, rng: random.Random, monospace: bool = False) -> Style:
    """Pick a font that covers the locale's characters, a size and a colour."""
    families = [
        f for f in font_families() if f.monospace == monospace and f.covers(inv.locale.symbol + "äéö")
    ]
    ink = rng.choice(((0, 0, 0), (25, 25, 25), (40, 40, 55)))
    return Style(rng.choice(families), rng.uniform(8.0, 10.5), rng.choice(ACCENTS), ink, rng.randrange(3))


def render_page(
    inv: InvoiceContent, layout: str, rng: random.Random, dpi: int
) -> tuple[Image.Image, list[TextLine]]:
    """Draw `inv` with one layout family at `dpi`; returns the page and its text lines. Receipts get a narrow
    paper strip and, mostly, a monospace font."""
    is_receipt = layout == "receipt"
    style = random_style(inv, rng, monospace=is_receipt and rng.random() < 0.7)
    if is_receipt:
        rows = 18 + len(inv.items) * (2 if inv.show_line_math else 1)
        canvas = Canvas("A4", dpi, style, width_pt=330, height_pt=max(420, rows * style.size * 1.4 + 80))
    else:
        paper = "Letter" if inv.locale.name in ("en_US", "en_CA") else "A4"
        canvas = Canvas(paper, dpi, style)
    LAYOUTS[layout](canvas, inv, rng)
    return canvas.image, canvas.text_lines()
