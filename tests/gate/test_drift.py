"""Drift features and Evidently's verdict: a shifted production set drifts, a fresh sample does not."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from training import drift
from training.data import SPLITS, read_split
from training.model import build_model
from training.synth.generate import GeneratorConfig, generate_dataset


def _pages(folder: Path) -> list[Image.Image]:
    return drift.load_images([folder / s / r.file_name for s in SPLITS for r in read_split(folder / s)])


def test_image_features_see_darker_rotated_pages():
    page = Image.new("RGB", (600, 800), "white")
    for row in range(100, 700, 40):
        page.paste((0, 0, 0), (50, row, 550, row + 12))
    features = drift.image_features(page)
    assert features["text_lines"] == 15 and features["aspect_ratio"] == pytest.approx(800 / 600)
    assert 0.1 < features["ink_density"] < 0.2
    darker = drift.image_features(ImageEnhance.Brightness(page).enhance(0.5))
    assert darker["brightness"] < features["brightness"] - 0.3


@pytest.mark.slow
def test_shifted_scans_drift_and_a_fresh_sample_does_not(generated, tokenizer, micro_config, tmp_path):
    model, processor = build_model(micro_config.with_overrides(max_length=32), tokenizer)
    generate_dataset(GeneratorConfig(n=40, seed=8), tmp_path / "fresh", progress=False)
    reference, fresh = _pages(generated), _pages(tmp_path / "fresh")
    shifted = [
        ImageEnhance.Brightness(page.rotate(7, expand=True, fillcolor="white")).enhance(0.6) for page in fresh
    ]

    same = drift.drift_report(*drift.feature_frames(model, processor, reference, fresh), drift_share=0.3)
    assert not same.drifted and same.drift_share < 0.3
    moved = drift.drift_report(*drift.feature_frames(model, processor, reference, shifted), drift_share=0.3)
    assert moved.drifted and moved.drift_share >= 0.3
    assert {"brightness", "contrast", "ink_density", "aspect_ratio"} <= {
        c for c, v in moved.columns.items() if v["drifted"]
    }
    assert {"embedding_pc1", "mean_confidence", "currency"} <= set(moved.columns)
    summary = moved.report.dict()
    assert any(t["status"] == "FAIL" for t in summary["tests"])
