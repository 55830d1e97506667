"""Reading guidance for band steps: where each written token lies on the band tells the model where to look.

A Donut trained from scratch does not start reading on its own: a fresh cross-attention is nearly uniform, so
the encoder only ever receives the gradient of the mean of its tokens, and the attention has nothing to find
until the encoder sees glyphs (`tests/benchmarks/run.py --only probe`). On bands of rendered lines the position
of every target token is known to within a character, which gives two extra losses:
- attention: the decoder's cross-attention puts its mass on the encoder tokens under the token it writes;
- glyphs: a linear head on each encoder token names the text token centred in it (dropped after training).
"""

from __future__ import annotations

import bisect
from typing import Any

import torch

Box = tuple[float, float, float, float]  # top, left, bottom, right in pixels of the band
BLANK_WEIGHT = 0.05  # encoder tokens with no text centred in them: most of a band, so they are down-weighted


def token_boxes(
    tokenizer, lines: list[tuple[float, float, float, float, str]]
) -> tuple[list[int], list[Box | None]]:
    """The lines' text tokenised (joined by newlines, as the band's target) and each token's approximate box:
    its characters' share of the line's width, as if all characters were equally wide. None for newlines."""
    texts = [line[4] for line in lines]
    encoded = tokenizer("\n".join(texts), add_special_tokens=False, return_offsets_mapping=True)
    starts = [0]
    for text in texts:
        starts.append(starts[-1] + len(text) + 1)
    boxes: list[Box | None] = []
    for first, last in encoded.offset_mapping:
        index = bisect.bisect_right(starts, first) - 1
        top, left, bottom, right, text = lines[index]
        begin, end = first - starts[index], last - starts[index]
        if begin >= len(text) or end <= begin:
            boxes.append(None)
            continue
        width = (right - left) / len(text)
        boxes.append((top, left + begin * width, bottom, left + end * width))
    return encoded.input_ids, boxes


def guide_targets(
    boxes: list[Box | None], token: list[int], grid: tuple[int, int], stride: int, length: int, blank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a band whose encoder output is a `grid` of tokens `stride` pixels apart:
    - where (length, rows * cols, bool): the encoder tokens each label position should attend to, those its box
      overlaps (everywhere for newlines, `</s>`, padding; slack around the box measured worse in the probe);
    - glyphs (rows * cols,): the text token centred in each encoder token, `blank` where none is."""
    rows, cols = grid
    where = torch.ones(length, rows, cols, dtype=torch.bool)
    glyphs = torch.full((rows, cols), blank)
    for position, (box, token_id) in enumerate(zip(boxes[:length], token, strict=False)):
        if box is None:
            continue
        top, left, bottom, right = box
        row0, row1 = int(top // stride), int(max(top, bottom - 1) // stride) + 1
        col0, col1 = int(left // stride), int(max(left, right - 1) // stride) + 1
        where[position] = False
        where[position, row0:row1, col0:col1] = True
        glyphs[
            min(rows - 1, int((top + bottom) / 2 // stride)), min(cols - 1, int((left + right) / 2 // stride))
        ] = token_id
    return where.flatten(1), glyphs.flatten()


class ReadingGuide(torch.nn.Module):
    """The two guidance losses of a band batch; its glyph head trains alongside the model and is not exported."""

    def __init__(self, hidden_size: int, vocab_size: int, blank: int) -> None:
        super().__init__()
        self.glyphs = torch.nn.Linear(hidden_size, vocab_size)
        weight = torch.ones(vocab_size)
        weight[blank] = BLANK_WEIGHT
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, outputs: Any, where: torch.Tensor, glyphs: torch.Tensor, labels: torch.Tensor) -> dict:
        """`outputs` of the model called with `output_attentions=True`; returns `attention` and `glyphs` losses."""
        written = labels != -100
        attention = 0.0
        for layer in outputs.cross_attentions:  # (batch, heads, target, encoder tokens)
            mass = (layer.float().mean(1) * where).sum(-1).clamp_min(1e-6)
            attention = attention - mass.log()[written].mean() / len(outputs.cross_attentions)
        logits = self.glyphs(outputs.encoder_last_hidden_state).float()
        glyph_loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), glyphs.flatten(), weight=self.weight
        )
        return {"attention": attention, "glyphs": glyph_loss}
