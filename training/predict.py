"""Reading invoices: images in, canonical fields with per-field confidence out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from training.hardware import autocast, device
from training.schema import FIELDS
from training.tokenizer import token2json


@dataclass
class Prediction:
    fields: dict[str, Any]
    confidence: dict[str, float] = field(default_factory=dict)
    sequence: str = ""


def pixel_values(processor, images: list[Image.Image]) -> torch.Tensor:
    return processor(images=[image.convert("RGB") for image in images], return_tensors="pt").pixel_values


def batches(model, processor, images: list[Image.Image], batch_size: int) -> Iterator[torch.Tensor]:
    """Put the model in eval mode on the device and yield the pages' pixel values there, batch by batch."""
    model.eval()
    target = device()
    model.to(target)
    for start in range(0, len(images), batch_size):
        yield pixel_values(processor, images[start : start + batch_size]).to(target)


def field_confidence(tokens: list[str], probabilities: list[float]) -> dict[str, float]:
    """Per top-level field, the lowest probability among the tokens the decoder wrote for it (its tags
    included): one unsure digit makes the whole amount unsure."""
    confidence: dict[str, float] = {}
    current: str | None = None
    for token, probability in zip(tokens, probabilities, strict=True):
        if current is None and token.startswith("<s_") and token[3:-1] in FIELDS:
            current = token[3:-1]
        if current is not None:
            confidence[current] = min(confidence.get(current, 1.0), probability)
            if token == f"</s_{current}>":
                current = None
    return {name: round(value, 4) for name, value in confidence.items()}


def decode(processor, sequence_ids: list[int]) -> str:
    tokenizer = processor.tokenizer
    text = tokenizer.decode(sequence_ids, skip_special_tokens=False)
    for token in (tokenizer.eos_token, tokenizer.pad_token):
        text = text.replace(token, "")
    return text


@torch.inference_mode()
def predict(
    model, processor, images: list[Image.Image], batch_size: int = 8, max_length: int | None = None
) -> list[Prediction]:
    """Greedy decoding in batches; the fields come from token2json, the confidence from token probabilities."""
    predictions = []
    for batch in batches(model, processor, images, batch_size):
        with autocast():
            out = model.generate(
                batch,
                max_length=max_length or model.generation_config.max_length,
                do_sample=False,
                num_beams=1,
                output_scores=True,
                return_dict_in_generate=True,
            )
        scores = (
            model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).float().exp()
        )
        for row, sequence in enumerate(out.sequences):
            generated = sequence[1:].tolist()  # after the task token the decoder started from
            tokens = processor.tokenizer.convert_ids_to_tokens(generated)
            text = decode(processor, generated)
            probabilities = scores[row, : len(generated)].tolist()
            predictions.append(Prediction(token2json(text), field_confidence(tokens, probabilities), text))
    return predictions
