"""The promotion gate against a real MLflow server: refusals with reasons, promotion, rollback, drift."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageEnhance

from training import gate, registry
from training.data import read_split, write_split
from training.synth.generate import GeneratorConfig, generate_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shuffled(handful: Path, tmp_path_factory) -> Path:
    """`handful` with every training label moved to the next page: a model trained on it learns nonsense."""
    out = tmp_path_factory.mktemp("shuffled") / "data"
    shutil.copytree(handful, out)
    records = read_split(out / "train")
    labels = [r.gt_parse for r in records]
    for record, label in zip(records, labels[1:] + labels[:1], strict=True):
        record.gt_parse = label
    write_split(out / "train", records)
    return out


def _pages(folder: Path, n: int, seed: int, shift: bool = False) -> Path:
    """`n` fresh invoices as production pages; `shift` rotates and darkens them like a bad scanner."""
    generated = folder.with_name(folder.name + "-generated")
    generate_dataset(
        GeneratorConfig(n=n, seed=seed, degrade_share=0.0, pdf_share=0.0), generated, progress=False
    )
    folder.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        for record in read_split(generated / split):
            with Image.open(generated / split / record.file_name) as image:
                page = image.convert("RGB")
            if shift:
                page = ImageEnhance.Brightness(page.rotate(8, expand=True, fillcolor="white")).enhance(0.55)
            page.save(folder / f"{Path(record.file_name).stem}.png")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a PDF")
    return folder


@pytest.fixture(scope="module")
def production(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("production")
    return {
        "fresh": _pages(root / "fresh", 12, seed=21),
        "shifted": _pages(root / "shifted", 12, 22, shift=True),
    }


@pytest.fixture(scope="module")
def versions(mlflow_server, handful, shuffled, train_config, tmp_path_factory) -> dict[str, str]:
    """Three registered candidates: partly trained, trained on shuffled labels, and trained to convergence."""
    from training.tracking import train_and_log

    runs = tmp_path_factory.mktemp("runs")
    fast = {"image_size": (480, 320)}  # enough to tell four pages apart, a third of the default's cost
    plans = {
        "weak": train_config(handful, runs / "weak", max_steps=200, eval_every=1000, **fast),
        "shuffled": train_config(shuffled, runs / "shuffled", max_steps=100, eval_every=1000, **fast),
        "good": train_config(handful, runs / "good", **fast),
    }
    return {
        name: str(train_and_log(config, progress=False)["registered_version"])
        for name, config in plans.items()
    }


@pytest.fixture(scope="module")
def config(handful) -> gate.GateConfig:
    return gate.GateConfig(
        frozen_sets=(str(handful / "test"),),
        min_field_accuracy={"vendor_name": 0.5, "total": 0.5},
        min_well_formed=0.5,
        reference_sample=4,
        current_sample=12,
    )


def _failed(decision: gate.Decision) -> set[str]:
    return {check.rule for check in decision.checks if not check.passed}


def _tags(version: str) -> dict[str, str]:
    return registry.client().get_model_version(registry.MODEL_NAME, version).tags


def test_promotion_lifecycle(versions, config, production, tmp_path):
    champion = lambda: registry.by_alias("champion")  # noqa: E731

    # No champion yet: the absolute floors decide, and a model trained on shuffled labels misses them.
    decision = gate.evaluate(versions["shuffled"], None, config)
    gate.record(decision, tmp_path / "1")
    assert not decision.passed and "min_accuracy[vendor_name]" in _failed(decision)
    assert any("vendor_name accuracy" in reason for reason in decision.reasons)
    assert _tags(versions["shuffled"])["gate.decision"] == "refused" and champion() is None

    # The partly trained model clears the floors; fresh production pages show no drift: promoted.
    decision = gate.evaluate(versions["weak"], production["fresh"], config)
    summary = gate.record(decision, tmp_path / "2")
    assert decision.passed, decision.reasons
    drift_check = next(c for c in decision.checks if c.rule == "no_drift")
    assert drift_check.value is not None and "no drift" in drift_check.detail
    assert decision.evidence["current"]["pages"] == 12
    assert "broken.pdf" in next(iter(decision.evidence["current"]["skipped"]))
    assert champion().version == versions["weak"] and summary["decision"] == "promoted"
    weak_scores = decision.evidence["candidate_scores"]

    # Against a champion, the shuffled model is refused for regressing, with the figures in the reasons.
    decision = gate.evaluate(versions["shuffled"], None, config)
    gate.record(decision, tmp_path / "3")
    assert {"max_field_regression", "f1_vs_champion"} <= _failed(decision)
    assert decision.evidence["champion_scores"]["per_field"] == weak_scores["per_field"]
    assert champion().version == versions["weak"]
    assert "largest drop against the champion" in _tags(versions["shuffled"])["gate.reasons"]

    # Rotated, darkened scans drift away from the candidate's training pages: refused for drift alone.
    decision = gate.evaluate(versions["good"], production["shifted"], config)
    assert _failed(decision) == {"no_drift"}, decision.reasons
    drifted = {c for c, v in decision.evidence["drift"]["columns"].items() if v["drifted"]}
    assert "brightness" in drifted and decision.evidence["drift"]["drift_share"] >= 0.3, drifted

    # On fresh pages the converged model beats the champion: promoted, the old champion kept as `previous`.
    decision = gate.evaluate(versions["good"], production["fresh"], config)
    gate.record(decision, tmp_path / "4")
    assert decision.passed, decision.reasons
    assert decision.evidence["candidate_scores"]["f1"] > weak_scores["f1"]
    assert champion().version == versions["good"]
    assert registry.by_alias("previous").version == versions["weak"]
    tags = _tags(versions["good"])
    assert tags["gate.decision"] == "promoted" and tags["gate.champion_version"] == versions["weak"]

    # The evidence is on the candidate's run.
    client = registry.client()
    run_id = champion().run_id
    gate_dir = client.list_artifacts(run_id, "gate")[0].path
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, gate_dir)}
    assert {"decision.json", "drift_report.html", "drift_report.json", "field_comparison.png"} <= logged
    assert client.get_run(run_id).data.metrics["gate_passed"] == 1.0

    # Rollback restores the previous champion, once.
    result = gate.rollback("test: bad week in production")
    assert result["champion"]["version"] == versions["weak"] == champion().version
    assert registry.by_alias("previous") is None
    assert _tags(versions["good"])["gate.rollback_reason"] == "test: bad week in production"
    with pytest.raises(LookupError, match="no previous champion"):
        gate.rollback()


def test_gate_command_prints_each_rule_and_exits_1_on_refusal(versions, config, tmp_path):
    params = tmp_path / "params.yaml"
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()}
    params.write_text(yaml.safe_dump({"gate": settings}))
    env = {**os.environ, "INVOICE_PARAMS": str(params)}
    command = ["invoice", "model", "gate", "--candidate", versions["shuffled"], "--no-record"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "min_accuracy[vendor_name]" in result.stderr and "REFUSED" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["decision"] == "refused" and summary["reasons"]
