"""Shared fixtures: small generated datasets, the real third-party sample, and the CLI on PATH."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from training.synth.generate import GeneratorConfig, generate_dataset

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
