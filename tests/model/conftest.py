"""Model fixtures: a tokenizer built offline from generated labels and a very small architecture."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import SPLITS, read_split
from training.model import PRESETS, ModelConfig
from training.tokenizer import build_tokenizer, label_corpus


@pytest.fixture(scope="session")
def labels(generated: Path) -> list[dict]:
    return [record.gt_parse for split in SPLITS for record in read_split(generated / split)]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, labels: list[dict]) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(label_corpus(labels), out, vocab_size=800)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    from training.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def micro_config() -> ModelConfig:
    """Small enough that a forward pass takes milliseconds."""
    return PRESETS["tiny"].with_overrides(
        image_size=(320, 240),
        depths=(1, 1, 1),
        decoder_layers=1,
        d_model=128,
        decoder_heads=4,
        decoder_ffn_dim=256,
        max_length=512,
        window_size=5,
    )
