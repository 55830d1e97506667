"""Shared fixtures: small generated datasets, the real third-party sample, real MLflow and Label Studio
servers, and the CLI on PATH."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import start_label_studio, start_mlflow, stop

from training.data import SPLITS, read_split, write_split
from training.model import PRESETS, ModelConfig
from training.synth.generate import GeneratorConfig, generate_dataset
from training.tokenizer import build_tokenizer, label_corpus
from training.train import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real-invoice sample lives beside the checkout; tests may read it, the product never does.
REALDATA = REPO_ROOT.parent / "shared" / "realdata"

# `invoice` and `dvc` must be the ones of the environment running the tests.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


@pytest.fixture(scope="session")
def small_config() -> GeneratorConfig:
    return GeneratorConfig(n=40, seed=7, pdf_share=0.25)


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory, small_config: GeneratorConfig) -> Path:
    """A 40-invoice dataset, generated once per session; copy it before changing it."""
    out = tmp_path_factory.mktemp("generated")
    generate_dataset(small_config, out, progress=False)
    return out


@pytest.fixture
def dataset(generated: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the generated dataset."""
    copy = tmp_path / "dataset"
    shutil.copytree(generated, copy)
    return copy


@pytest.fixture(scope="session")
def realdata() -> Path:
    assert (REALDATA / "sroie" / "labels.jsonl").exists(), (
        f"the real-invoice sample is expected at {REALDATA}"
    )
    return REALDATA


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


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free port with its own SQLite store and artifact folder."""
    root = tmp_path_factory.mktemp("mlflow")
    process, url = start_mlflow(root, f"sqlite:///{root / 'mlflow.db'}")
    os.environ["MLFLOW_TRACKING_URI"] = url
    yield url
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    stop(process)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> Iterator[tuple[str, str, Path]]:
    """A real Label Studio, started once: (url, API token, the folder it serves local files from: the
    session's temporary folder). Each test keeps to its own project (params.yaml review.project_title)."""
    document_root = tmp_path_factory.getbasetemp()
    process, url, token = start_label_studio(tmp_path_factory.mktemp("label-studio"), document_root)
    yield url, token, document_root
    stop(process)


@pytest.fixture(scope="session")
def handful(tmp_path_factory) -> Path:
    """Four clean invoices with at most two line items, used as train, validation and test split alike."""
    out = tmp_path_factory.mktemp("handful")
    generate_dataset(GeneratorConfig(n=60, seed=5, degrade_share=0.0, pdf_share=0.0), out, progress=False)
    chosen = [r for r in read_split(out / "train") if len(r.gt_parse["line_items"]) <= 2][:4]
    for split in ("validation", "test"):
        for record in chosen:
            shutil.copy(out / "train" / record.file_name, out / split / record.file_name)
        write_split(out / split, chosen)
    write_split(out / "train", chosen)
    return out


@pytest.fixture(scope="session")
def train_config():
    """Factory of a TrainConfig with which the tiny model memorises `handful` in a few hundred CPU steps."""

    def make(data: Path, output: Path, **overrides) -> TrainConfig:
        settings = dict(
            data=str(data),
            output=str(output),
            image_size=(640, 480),
            max_length=384,
            max_steps=400,
            batch_size=4,
            learning_rate=1e-3,
            warmup_steps=10,
            eval_every=50,
            eval_samples=4,
            patience=100,
            checkpoint_every=1000,
            vocab_size=800,
        )
        return TrainConfig(**{**settings, **overrides})

    return make
