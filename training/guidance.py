"""Reading guidance: where the text lies on an image tells the model where to look and what it sees there.

A Donut trained from scratch does not start reading on its own: a fresh cross-attention is nearly uniform, so
the encoder only ever receives the gradient of the mean of its tokens, and the attention has nothing to find
until the encoder sees glyphs (`tests/benchmarks/run.py --only probe`). Synthetic pages come with the box of every
text drawn, so on bands of lines (whose target is their text) and on whole pages (whose field values are mostly
written verbatim somewhere on them) the position of target tokens is known to within a character or so, which
gives two extra losses:
- attention: the decoder's cross-attention puts its mass on the encoder tokens under the token it writes;
- glyphs: a linear head on each encoder token names the characters centred in it, in reading order, one slot
  each (dropped after training). Characters rather than subword tokens: every character on the band is a
  target, from a vocabulary of ~190 that look alike wherever they occur, where one subword per encoder token
  labelled a third of the text from 2,000 classes.

Before any of that, a convolution stem can learn glyphs on its own (`train_stem`): crops around single characters
are ~20x cheaper per step than bands through the whole model, and glyphs are learnt per step, not per character
seen. After 3,000 such steps (2.5 minutes) the glyph head named 0.185 of held-out characters after 400 band
steps, 0.134 without them (BENCHMARKS.md, glyph probe).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any

import torch

Box = tuple[float, float, float, float]  # top, left, bottom, right in pixels of the band
Line = tuple[float, float, float, float, str]  # a line's box and its text
# Glyph classes: 0 ends a token's characters, then these, then one class for any other character.
CHARACTERS = (
    string.digits + string.ascii_letters + string.punctuation + "€£¥₹°·–—…«»“”‘’"
    "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝßàáâãäåæçèéêëìíîïñòóôõöøùúûüýÿĄąĆćĘęŁłŃńŚśŹźŻżŠšŽžČčŘřŮů"
)
CHARACTER_CLASS = {character: index + 1 for index, character in enumerate(CHARACTERS)}
OTHER_CHARACTER = len(CHARACTERS) + 1
GLYPH_CLASSES = len(CHARACTERS) + 2
GLYPH_SLOTS = 16  # a 32-px token at ~6 px a character holds up to ~5 characters of each of ~2.5 lines


def character_box(line: Line, index: int) -> Box:
    """The box of character `index` of the line's text, all its characters taken as equally wide."""
    top, left, bottom, right, text = line
    width = (right - left) / max(1, len(text))
    return top, left + index * width, bottom, left + (index + 1) * width


def line_characters(lines: list[Line]) -> tuple[str, dict[int, Box]]:
    """The lines' text joined by newlines (a band's or page's transcript) and the box of each of its characters."""
    text, characters = "", {}
    for line in lines:
        text += "\n" if text else ""
        for index in range(len(line[4])):
            characters[len(text) + index] = character_box(line, index)
        text += line[4]
    return text, characters


def label_values(label: Any) -> list[str]:
    """The label's values in the order `json2token` writes them."""
    if isinstance(label, dict):
        return [text for item in label.values() for text in label_values(item)]
    if isinstance(label, list):
        return [text for item in label for text in label_values(item)]
    return [] if label is None else [str(label)]


def value_characters(target: str, label: Any, lines: list[Line]) -> dict[int, Box]:
    """The boxes of the characters of a field sequence `target` (`json2token(label)`) that belong to one of the
    label's values written verbatim on a line of the page; values the page writes otherwise have none."""
    characters: dict[int, Box] = {}
    cursor = 0
    for value in label_values(label):
        at = target.find(value, cursor) if value else -1
        if at < 0:
            continue
        cursor = at + len(value)
        for line in lines:
            found = line[4].find(value)
            if found >= 0:
                for index in range(len(value)):
                    characters[at + index] = character_box(line, found + index)
                break
    return characters


def token_boxes(tokenizer, text: str, characters: dict[int, Box]) -> tuple[list[int], list[Box | None]]:
    """`text` tokenised, and each token's box: around its characters when all of them (spaces aside) have boxes
    on one line, else None (tags, newlines, text not on the page)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    boxes: list[Box | None] = []
    for first, last in encoded.offset_mapping:
        inked = [index for index in range(first, last) if not text[index].isspace()]
        placed = [characters.get(index) for index in inked]
        if not placed or None in placed or len({box[0] for box in placed}) > 1:
            boxes.append(None)
            continue
        boxes.append((placed[0][0], placed[0][1], placed[0][2], placed[-1][3]))
    return encoded.input_ids, boxes


def attention_targets(
    boxes: list[Box | None], grid: tuple[int, int], stride: int, length: int
) -> torch.Tensor:
    """(length, rows * cols, bool) for a band whose encoder output is a `grid` of tokens `stride` pixels apart:
    the encoder tokens each label position should attend to, those its box overlaps (everywhere for newlines,
    `</s>` and padding; slack around the box measured worse in the probe)."""
    rows, cols = grid
    where = torch.ones(length, rows, cols, dtype=torch.bool)
    for position, box in enumerate(boxes[:length]):
        if box is None:
            continue
        top, left, bottom, right = box
        row0, row1 = int(top // stride), int(max(top, bottom - 1) // stride) + 1
        col0, col1 = int(left // stride), int(max(left, right - 1) // stride) + 1
        where[position] = False
        where[position, row0:row1, col0:col1] = True
    return where.flatten(1)


def glyph_targets(lines: list[Line] | None, grid: tuple[int, int], stride: int) -> torch.Tensor:
    """(rows * cols, GLYPH_SLOTS) classes: the characters (spaces aside) whose centre lies in each encoder token,
    by line and then left to right (characters taken as equally wide), then 0 to end them; -100 after that, and
    everywhere for an image whose `lines` are unknown (None)."""
    rows, cols = grid
    if lines is None:
        return torch.full((rows * cols, GLYPH_SLOTS), -100)
    cells: list[list[int]] = [[] for _ in range(rows * cols)]
    for line in lines:
        top, _, bottom, _, text = line
        row = min(rows - 1, int((top + bottom) / 2 // stride))
        for index, character in enumerate(text):
            if not character.isspace():
                _, left, _, right = character_box(line, index)
                col = min(cols - 1, int((left + right) / 2 // stride))
                cells[row * cols + col].append(CHARACTER_CLASS.get(character, OTHER_CHARACTER))
    targets = torch.full((rows * cols, GLYPH_SLOTS), -100)
    for index, classes in enumerate(cells):
        written = [*classes, 0][:GLYPH_SLOTS]
        targets[index, : len(written)] = torch.tensor(written)
    return targets


def train_stem(
    stem: torch.nn.Sequential,
    crops: Callable[[random.Random], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    learning_rate: float = 2e-3,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """Train a convolution `stem` (training.model.conv_stem) to name the character centred in its middle output
    cell: `crops(rng)` gives (n, 3, 3 cells, 3 cells) uint8 crops and their glyph classes. AdamW one-cycle; the
    linear head is dropped afterwards. Returns the share of characters named right over the last 100 steps.
    `progress(step, accuracy)` is called after every step."""
    target = next(stem.parameters()).device
    head = torch.nn.Linear(stem[-1].out_channels, GLYPH_CLASSES).to(target)
    parameters = [*stem.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=max(steps, 2), pct_start=0.1
    )
    stem.train()
    named: list[float] = []
    for step in range(steps):
        pixels, classes = crops(random.Random(step))
        pixels, classes = pixels.to(target).float().div_(127.5).sub_(1.0), classes.to(target)
        features = stem(pixels)
        logits = head(features[:, :, features.shape[2] // 2, features.shape[3] // 2])
        loss = torch.nn.functional.cross_entropy(logits, classes)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        named.append((logits.detach().argmax(-1) == classes).float().mean().item())
        if progress is not None:
            progress(step + 1, named[-1])
    return sum(named[-100:]) / max(1, len(named[-100:]))


class ReadingGuide(torch.nn.Module):
    """The two guidance losses of a batch; its glyph head trains alongside the model and is not exported."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.glyphs = torch.nn.Linear(hidden_size, GLYPH_SLOTS * GLYPH_CLASSES)

    def forward(self, outputs: Any, where: torch.Tensor, glyphs: torch.Tensor, labels: torch.Tensor) -> dict:
        """`outputs` of the model called with `output_attentions=True`; returns the `attention` and `glyphs`
        losses and, to follow, `glyph_accuracy`: the share of the characters the glyph head names right."""
        if not outputs.cross_attentions:
            raise ValueError("the model returned no cross-attention weights: set its attention to eager")
        written = labels != -100
        attention = 0.0
        for layer in outputs.cross_attentions:  # (batch, heads, target, encoder tokens)
            mass = (layer.float().mean(1) * where).sum(-1).clamp_min(1e-6)
            attention = attention - mass.log()[written].mean() / len(outputs.cross_attentions)
        glyph_loss, accuracy = self.glyph_loss(outputs.encoder_last_hidden_state, glyphs)
        return {"attention": attention, "glyphs": glyph_loss, "glyph_accuracy": accuracy}

    def glyph_loss(self, hidden: torch.Tensor, glyphs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The glyph head's cross-entropy on the encoder tokens `hidden` against `glyphs` (`glyph_targets`), and
        its accuracy on the characters (end markers aside)."""
        logits = self.glyphs(hidden).float().view(*glyphs.shape, GLYPH_CLASSES)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, -2), glyphs.flatten())
        characters = glyphs > 0
        named = (logits.detach().argmax(-1) == glyphs) & characters
        return loss, named.sum() / characters.sum().clamp_min(1)
