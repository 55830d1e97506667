"""Reading guidance: where each token of a band lies, and what the encoder tokens should see there."""

from __future__ import annotations

import torch

from training.guidance import (
    CHARACTER_CLASS,
    GLYPH_SLOTS,
    OTHER_CHARACTER,
    ReadingGuide,
    attention_targets,
    glyph_targets,
    line_characters,
    token_boxes,
    train_stem,
    value_characters,
)
from training.model import conv_stem
from training.tokenizer import json2token


def test_token_boxes_follow_the_characters_of_their_line(tokenizer):
    lines = [(10, 100, 30, 300, "INV 12345"), (50, 20, 70, 120, "Total 9")]
    text, characters = line_characters(lines)
    assert text == "INV 12345\nTotal 9" and characters[10] == (50, 20, 70, 20 + 100 / 7)
    ids, boxes = token_boxes(tokenizer, text, characters)
    assert (
        tokenizer.decode(ids) == "INV 12345\nTotal 9"
        or tokenizer.decode(ids).split() == "INV 12345 Total 9".split()
    )
    assert len(boxes) == len(ids)
    placed = [box for box in boxes if box is not None]
    first_line = [box for box in placed if box[0] == 10]
    assert first_line and all(100 <= left < right <= 300 for _, left, _, right in first_line)
    assert [box[1] for box in first_line] == sorted(box[1] for box in first_line)  # left to right
    second_line = [box for box in placed if box[0] == 50]
    assert second_line and all(box[2] == 70 for box in second_line)
    assert placed.index(second_line[0]) > placed.index(first_line[-1])  # in reading order


def test_field_tokens_are_placed_where_the_page_writes_their_value(tokenizer):
    label = {"invoice_number": "INV-77", "invoice_date": "2024-03-01", "total": "12.50"}
    lines = [(10, 0, 20, 110, "Invoice INV-77"), (30, 0, 40, 80, "1 March 2024"), (50, 0, 60, 50, "12.50")]
    target = json2token(label)
    characters = value_characters(target, label, lines)
    number_at, total_at = target.index("INV-77"), target.index("12.50")
    assert characters[number_at] == (10, 8 * 110 / 14, 20, 9 * 110 / 14)  # "INV-77" starts at character 8
    assert characters[total_at] == (50, 0, 60, 10) and len(characters) == len("INV-77") + len("12.50")
    ids, boxes = token_boxes(tokenizer, target, characters)
    placed = [tokenizer.decode([i]) for i, box in zip(ids, boxes, strict=True) if box is not None]
    assert "".join(placed).replace(" ", "") == "INV-7712.50"  # tags and the date written otherwise: unplaced


def test_attention_targets_point_each_label_at_its_place():
    boxes = [(0, 64, 32, 96), None, (64, 200, 96, 230)]
    where = attention_targets(boxes, grid=(4, 10), stride=32, length=5).view(5, 4, 10)
    assert where[0, 0, 2] and where[0].sum() == 1  # the encoder tokens its box overlaps
    assert where[1].all() and where[3:].all()  # a newline, </s> and padding may look anywhere
    assert where[2, 2, 6:8].all() and where[2].sum() == 2


def test_glyph_targets_name_each_tokens_characters_in_reading_order():
    # 6 px a character, tokens 16 px apart: "A1" lie in column 0 and "b" in column 1 (the space is skipped); the
    # second line's centre is in row 0 too, so its characters follow the first line's there.
    lines = [(0, 0, 12, 24, "A1 b"), (4, 0, 14, 12, "Zé"), (36, 48, 44, 60, "∑x")]
    glyphs = glyph_targets(lines, grid=(3, 4), stride=16).view(3, 4, GLYPH_SLOTS)
    classes = CHARACTER_CLASS
    assert glyphs[0, 0, :6].tolist() == [classes["A"], classes["1"], classes["Z"], classes["é"], 0, -100]
    assert glyphs[0, 1, :3].tolist() == [classes["b"], 0, -100]
    assert glyphs[2, 3, :3].tolist() == [OTHER_CHARACTER, classes["x"], 0] and glyphs[2, 3, 3:].eq(-100).all()
    assert glyphs[1].tolist() == [[0] + [-100] * (GLYPH_SLOTS - 1)] * 4  # an empty token: its end only
    crowded = glyph_targets([(0, 0, 10, 40, "x" * 40)], grid=(1, 1), stride=64)
    assert crowded[0].tolist() == [classes["x"]] * GLYPH_SLOTS  # at most GLYPH_SLOTS characters


def test_attention_guidance_is_small_only_where_the_attention_is_on_the_box():
    guide = ReadingGuide(hidden_size=8)
    where = torch.zeros(1, 2, 6, dtype=torch.bool)
    where[0, :, 2] = True
    labels = torch.tensor([[3, -100]])
    on_box = torch.zeros(1, 2, 2, 6)
    on_box[..., 2] = 1.0
    spread = torch.full((1, 2, 2, 6), 1 / 6)

    class Outputs:
        encoder_last_hidden_state = torch.zeros(1, 6, 8)

    for attention, expected in ((on_box, 0.0), (spread, torch.tensor(6.0).log().item())):
        Outputs.cross_attentions = (attention,)
        losses = guide(Outputs, where, torch.zeros(1, 6, GLYPH_SLOTS, dtype=torch.long), labels)
        assert abs(losses["attention"].item() - expected) < 1e-4


def test_glyph_accuracy_counts_the_characters_named_right():
    guide = ReadingGuide(hidden_size=8)
    torch.nn.init.zeros_(guide.glyphs.weight)
    with torch.no_grad():  # the head names "7" in every slot
        guide.glyphs.bias.view(GLYPH_SLOTS, -1).zero_()[:, CHARACTER_CLASS["7"]] = 1.0

    class Outputs:
        encoder_last_hidden_state = torch.zeros(1, 2, 8)
        cross_attentions = (torch.full((1, 1, 1, 2), 0.5),)

    glyphs = torch.full((1, 2, GLYPH_SLOTS), -100)
    glyphs[0, 0, :4] = torch.tensor([CHARACTER_CLASS["7"], CHARACTER_CLASS["7"], CHARACTER_CLASS["A"], 0])
    glyphs[0, 1, 0] = 0  # an empty token: its end marker is not a character
    losses = guide(Outputs, torch.ones(1, 1, 2, dtype=torch.bool), glyphs, torch.tensor([[3]]))
    assert abs(losses["glyph_accuracy"].item() - 2 / 3) < 1e-6
    assert losses["glyphs"].item() > 0


def test_stem_learns_to_name_the_character_in_its_middle_cell():
    """Two glyphs, a vertical and a horizontal stroke, anywhere in the middle 8 px cell of a 24 px crop, beside
    random glyphs in the cells left and right of it to ignore: the stem alone learns to tell them apart."""

    def crops(rng):
        pixels = torch.full((64, 3, 24, 24), 255, dtype=torch.uint8)
        classes = torch.tensor([rng.randrange(2) for _ in range(64)])
        for crop, glyph in zip(pixels, classes.tolist(), strict=True):
            for cell_row, cell_col, shape in (
                (1, 1, glyph),
                (1, 0, rng.randrange(2)),
                (1, 2, rng.randrange(2)),
            ):
                y, x = 8 * cell_row + rng.randrange(2, 6), 8 * cell_col + rng.randrange(2, 6)
                if shape:
                    crop[:, y - 2 : y + 3, x] = 0
                else:
                    crop[:, y, x - 2 : x + 3] = 0
        return pixels, classes + CHARACTER_CLASS["1"]

    torch.manual_seed(0)
    stem = conv_stem(8, 16)
    before = [p.detach().clone() for p in stem.parameters()]
    assert train_stem(stem, crops, steps=120, learning_rate=3e-3) > 0.9
    assert any(not torch.equal(a, b) for a, b in zip(before, stem.parameters(), strict=True))
