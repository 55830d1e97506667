"""Drift between a model's training inputs and recent production inputs, measured with Evidently.

Each page becomes one row of numeric features that a shift in scanning, layout or customers moves: what the
image looks like (size, brightness, contrast, ink, text lines), what the encoder sees (the leading principal
components of its pooled embedding, fitted on the reference) and what the model answers (fields found,
confidence, total, currency, how familiar the vendor is).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from training.hardware import autocast
from training.predict import Prediction, batches, predict

IMAGE_FEATURES = ("width", "height", "aspect_ratio", "brightness", "contrast", "ink_density", "text_lines")
PREDICTION_FEATURES = ("fields_present", "mean_confidence", "min_confidence", "total", "vendor_frequency")
CATEGORICAL_FEATURES = ("currency",)
# Feature maths runs on a page scaled to this width: enough for text lines, fast on a CPU.
PROFILE_WIDTH = 600


@dataclass
class DriftResult:
    """Evidently's verdict and the evidence: per-feature drift scores and the report itself."""

    drifted: bool
    drift_share: float
    threshold: float
    columns: dict[str, dict[str, Any]]
    report: Any  # evidently Snapshot: .save_html(), .dict()

    def summary(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "drift_share": round(self.drift_share, 4),
            "threshold": self.threshold,
            "columns": self.columns,
        }


def image_features(image: Image.Image) -> dict[str, float]:
    """Look-of-the-page features; ink is any pixel darker than mid-grey."""
    width, height = image.size
    gray = image.convert("L")
    gray = gray.resize((PROFILE_WIDTH, max(1, round(height * PROFILE_WIDTH / width))))
    pixels = np.asarray(gray, dtype=np.float32) / 255.0
    ink = pixels < 0.5
    # Text lines: runs of rows with some ink, separated by blank rows.
    inked_rows = ink.mean(axis=1) > 0.005
    starts = np.flatnonzero(inked_rows[1:] & ~inked_rows[:-1]).size + int(inked_rows[0])
    return {
        "width": float(width),
        "height": float(height),
        "aspect_ratio": height / width,
        "brightness": float(pixels.mean()),
        "contrast": float(pixels.std()),
        "ink_density": float(ink.mean()),
        "text_lines": float(starts),
    }


@torch.inference_mode()
def pooled_embeddings(model, processor, images: list[Image.Image], batch_size: int = 8) -> np.ndarray:
    """The encoder's pooled output per page (what the decoder reads from, averaged over the page)."""
    rows = []
    for batch in batches(model, processor, images, batch_size):
        with autocast():
            rows.append(model.encoder(pixel_values=batch).pooler_output.float().cpu().numpy())
    return np.concatenate(rows)


def principal_axes(embeddings: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the leading principal directions of the reference embeddings."""
    mean = embeddings.mean(axis=0)
    _, _, directions = np.linalg.svd(embeddings - mean, full_matrices=False)
    return mean, directions[:components]


def _vendor_key(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower()) if name else ""


def prediction_features(predictions: list[Prediction], known_vendors: Counter) -> list[dict[str, Any]]:
    """What the model answered, per page; `known_vendors` counts vendor names in the reference answers."""
    total_known = sum(known_vendors.values()) or 1
    rows = []
    for prediction in predictions:
        fields, confidence = prediction.fields, prediction.confidence
        try:
            total = float(str(fields.get("total")).replace(",", ""))
        except ValueError:
            total = np.nan
        vendor = _vendor_key(fields.get("vendor_name"))
        rows.append(
            {
                "fields_present": float(sum(v not in (None, "", []) for v in fields.values())),
                "mean_confidence": float(np.mean(list(confidence.values()))) if confidence else 0.0,
                "min_confidence": float(min(confidence.values())) if confidence else 0.0,
                "total": total,
                "vendor_frequency": known_vendors[vendor] / total_known if vendor else 0.0,
                "currency": str(fields.get("currency") or "none"),
            }
        )
    return rows


def feature_frames(
    model, processor, reference: list[Image.Image], current: list[Image.Image], components: int = 4
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One feature row per page for both sets; the embedding axes and vendor counts come from the reference."""
    embeddings = [pooled_embeddings(model, processor, images) for images in (reference, current)]
    mean, axes = principal_axes(embeddings[0], components)
    answers = [predict(model, processor, images) for images in (reference, current)]
    known_vendors = Counter(_vendor_key(p.fields.get("vendor_name")) for p in answers[0])
    known_vendors.pop("", None)
    frames = []
    for images, embedding, predictions in zip((reference, current), embeddings, answers, strict=True):
        frame = pd.DataFrame([image_features(image) for image in images])
        projected = (embedding - mean) @ axes.T
        for index in range(projected.shape[1]):
            frame[f"embedding_pc{index + 1}"] = projected[:, index]
        frames.append(
            pd.concat([frame, pd.DataFrame(prediction_features(predictions, known_vendors))], axis=1)
        )
    return frames[0], frames[1]


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, drift_share: float) -> DriftResult:
    """Evidently's data-drift preset with its tests: drift when at least `drift_share` of features drift."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    # A feature with no value in one set (no total read at all) cannot be compared; it is reported as such.
    empty = [c for c in reference.columns if reference[c].isna().all() or current[c].isna().all()]
    reference, current = reference.drop(columns=empty), current.drop(columns=empty)
    numeric = [c for c in reference.columns if c not in CATEGORICAL_FEATURES]
    categorical = [c for c in CATEGORICAL_FEATURES if c in reference.columns]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    report = Report([DataDriftPreset(drift_share=drift_share)], include_tests=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        snapshot = report.run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )
    result = snapshot.dict()
    columns: dict[str, dict[str, Any]] = {c: {"method": "none: no values", "drifted": False} for c in empty}
    share = 0.0
    for metric in result["metrics"]:
        name = metric["metric_name"]
        if name.startswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif name.startswith("ValueDrift(column="):
            column = name[len("ValueDrift(column=") :].split(",")[0]
            method = name.split("method=")[1].split(",")[0]
            threshold = float(name.split("threshold=")[1].rstrip(")"))
            score = float(metric["value"])
            # p-value methods drift below the threshold, distance methods above it.
            drifted = score < threshold if "p_value" in method else score >= threshold
            columns[column] = {"method": method, "score": round(score, 6), "drifted": drifted}
    return DriftResult(share >= drift_share, share, drift_share, columns, snapshot)


def load_images(paths: list[Path]) -> list[Image.Image]:
    """Pages as RGB images."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images
