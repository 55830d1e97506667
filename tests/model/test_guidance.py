"""Reading guidance: where each token of a band lies, and what the encoder tokens should see there."""

from __future__ import annotations

import torch

from training.guidance import ReadingGuide, guide_targets, token_boxes


def test_token_boxes_follow_the_characters_of_their_line(tokenizer):
    lines = [(10, 100, 30, 300, "INV 12345"), (50, 20, 70, 120, "Total 9")]
    ids, boxes = token_boxes(tokenizer, lines)
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


def test_guide_targets_point_each_label_at_its_place(tokenizer):
    boxes = [(0, 64, 32, 96), None, (64, 200, 96, 230)]
    where, glyphs = guide_targets(boxes, [5, 6, 7], grid=(4, 10), stride=32, length=5, blank=1)
    where = where.view(5, 4, 10)
    assert where[0, 0, 2] and where[0].sum() == 1  # the encoder tokens its box overlaps
    assert where[1].all() and where[3:].all()  # a newline, </s> and padding may look anywhere
    assert where[2, 2, 6:8].all() and where[2].sum() == 2
    assert glyphs.view(4, 10)[0, 2] == 5 and glyphs.view(4, 10)[2, 6] == 7 and (glyphs == 1).sum() == 38


def test_attention_guidance_is_small_only_where_the_attention_is_on_the_box():
    guide = ReadingGuide(hidden_size=8, vocab_size=12, blank=1)
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
        losses = guide(Outputs, where, torch.ones(1, 6, dtype=torch.long), labels)
        assert abs(losses["attention"].item() - expected) < 1e-4
