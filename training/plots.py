"""Pictures people look at: the per-field accuracy chart and predictions drawn beside their pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from training.evaluate import Example, field_correct
from training.schema import SCALAR_FIELDS
from training.synth.fonts import font_families, load_font


def field_accuracy_chart(scores: dict[str, Any], out: Path) -> None:
    """Horizontal bars of exact match per field, with the support in the label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = list(scores["per_field"])
    values = [scores["per_field"][f]["accuracy"] for f in fields]
    figure, axis = plt.subplots(figsize=(7, 0.4 * len(fields) + 1.2))
    axis.barh([f"{f} (n={scores['per_field'][f]['support']})" for f in fields], values, color="#1f4e79")
    axis.set_xlim(0, 1)
    axis.invert_yaxis()
    axis.set_xlabel("exact match")
    axis.set_title(
        f"Per-field accuracy on {scores['n']} documents (F1 {scores['f1']:.2f}, TED acc. {scores['ted_accuracy']:.2f})"
    )
    for index, value in enumerate(values):
        axis.text(min(value + 0.01, 0.9), index, f"{value:.2f}", va="center")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def gate_comparison_chart(candidate: dict[str, Any], champion: dict[str, Any] | None, out: Path) -> None:
    """Grouped bars of exact match per field: candidate beside champion, as the gate saw them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fields = list(candidate["per_field"])
    positions = np.arange(len(fields))
    figure, axis = plt.subplots(figsize=(7, 0.5 * len(fields) + 1.2))
    bars = [("candidate", candidate, "#1f4e79", -0.2)]
    if champion is not None:
        bars.append(("champion", champion, "#c55a11", 0.2))
    for label, scores, color, offset in bars:
        values = [scores["per_field"].get(f, {}).get("accuracy", 0.0) for f in fields]
        axis.barh(
            positions + offset, values, height=0.4, color=color, label=f"{label} (F1 {scores['f1']:.2f})"
        )
    axis.set_yticks(positions, fields)
    axis.set_xlim(0, 1)
    axis.invert_yaxis()
    axis.set_xlabel("exact match on the frozen sets")
    axis.legend(loc="lower right")
    axis.set_title(f"Gate: per-field accuracy on {candidate['n']} frozen documents")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def prediction_sheet(examples: list[Example], predictions: list, out: Path, width: int = 560) -> None:
    """Each page beside its predicted fields: green where right, red where wrong (with the label)."""
    font = load_font(font_families()[0].regular, 15)
    panels = []
    for example, prediction in zip(examples, predictions, strict=True):
        with Image.open(example.image) as page:
            page = page.convert("RGB")
            page.thumbnail((width, width * 1.5))
        panel = Image.new("RGB", (page.width + 620, max(page.height, 28 + 22 * len(SCALAR_FIELDS))), "white")
        panel.paste(page, (0, 0))
        draw = ImageDraw.Draw(panel)
        draw.text((page.width + 12, 6), example.image.name, fill=(60, 60, 60), font=font)
        for row, name in enumerate(SCALAR_FIELDS):
            expected, predicted = example.label.get(name), prediction.fields.get(name)
            if expected is None and predicted is None:
                continue
            ok = expected is not None and field_correct(name, predicted, expected)
            text = f"{name}: {predicted}" + ("" if ok else f"  (label: {expected})")
            draw.text(
                (page.width + 12, 30 + 22 * row),
                text[:80],
                fill=(20, 130, 60) if ok else (190, 30, 30),
                font=font,
            )
        panels.append(panel)
    if not panels:
        return
    sheet = Image.new(
        "RGB", (max(p.width for p in panels), sum(p.height + 8 for p in panels)), (230, 230, 230)
    )
    y = 0
    for panel in panels:
        sheet.paste(panel, (0, y))
        y += panel.height + 8
    sheet.save(out)
