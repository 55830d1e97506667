"""The promotion gate: a candidate becomes the champion only on evidence, and every decision is recorded.

Rules (params.yaml `gate:`): an absolute floor per field, no field regressing more than allowed against the
champion, field F1 not below the champion's, well-formed outputs (Great Expectations), and no data drift
(Evidently) between the candidate's training pages and recent production pages. With no champion yet, the
absolute rules decide. The decision, its figures and the drift report go to the candidate's MLflow run; the
model version is tagged with the decision and its reasons; a pass moves `champion` (the old one keeps
`previous`), and `rollback` moves it back.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from training import drift, plots, registry
from training.config import PROJECT_ROOT, from_section
from training.data import read_split
from training.documents import DocumentError, Limits
from training.evaluate import Example, load_examples
from training.registry import ModelRef
from training.tracking import use_tracking
from training.train import evaluate_model
from training.validate import validate_predictions

PAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pdf")


@dataclass(frozen=True)
class GateConfig:
    """The gate's rules and sample sizes (params.yaml `gate:`)."""

    frozen_sets: tuple[str, ...] = ("data/test",)
    min_field_accuracy: dict[str, float] = field(default_factory=dict)
    max_field_regression: float = 0.02
    min_f1_delta: float = 0.0
    min_well_formed: float = 0.95
    drift_share: float = 0.3
    reference_sample: int = 100
    current_sample: int = 200
    embedding_components: int = 4

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> GateConfig:
        return from_section(cls, params)


@dataclass
class Check:
    """One rule: its figure against its threshold."""

    rule: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


@dataclass
class Decision:
    candidate: ModelRef
    champion: ModelRef | None
    checks: list[Check]
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [check.detail for check in self.checks if not check.passed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": "promoted" if self.passed else "refused",
            "candidate": asdict(self.candidate),
            "champion": asdict(self.champion) if self.champion else None,
            "reasons": self.reasons,
            "checks": [asdict(check) for check in self.checks],
        }


# ---------------------------------------------------------------- rules


def accuracy_checks(
    candidate: dict[str, Any], champion: dict[str, Any] | None, config: GateConfig
) -> list[Check]:
    """Absolute floors always; regression and F1 against the champion when there is one."""
    fields = candidate["per_field"]
    checks = []
    for name, floor in config.min_field_accuracy.items():
        value = fields.get(name, {}).get("accuracy")
        if value is None:
            checks.append(
                Check(f"min_accuracy[{name}]", False, None, floor, f"{name}: not in the frozen sets")
            )
            continue
        checks.append(
            Check(
                f"min_accuracy[{name}]",
                value >= floor,
                value,
                floor,
                f"{name} accuracy {value:.3f} {'>=' if value >= floor else '<'} floor {floor:.3f}",
            )
        )
    if champion is None:
        checks.append(Check("no_regression", True, None, None, "no champion yet: absolute rules decide"))
        return checks
    drops = {
        name: round(champion["per_field"][name]["accuracy"] - scores["accuracy"], 4)
        for name, scores in fields.items()
        if name in champion["per_field"]
    }
    worst = max(drops, key=drops.get) if drops else None
    drop = drops.get(worst, 0.0)
    checks.append(
        Check(
            "max_field_regression",
            drop <= config.max_field_regression,
            drop,
            config.max_field_regression,
            f"largest drop against the champion: {worst} by {drop:.3f} (allowed {config.max_field_regression:.3f})",
        )
    )
    delta = round(candidate["f1"] - champion["f1"], 4)
    checks.append(
        Check(
            "f1_vs_champion",
            delta >= config.min_f1_delta,
            delta,
            config.min_f1_delta,
            f"F1 {candidate['f1']:.3f} vs champion {champion['f1']:.3f} (delta {delta:+.3f}, "
            f"needed >= {config.min_f1_delta:+.3f})",
        )
    )
    return checks


def well_formed_check(predictions: list[dict[str, Any]], config: GateConfig) -> tuple[Check, dict[str, Any]]:
    """Great Expectations over the candidate's answers on the frozen sets."""
    outcome = validate_predictions(predictions, mostly=config.min_well_formed)
    failing = {rule: r for rule, r in outcome.items() if not r["success"]}
    checked = sum(r["checked"] for r in outcome.values())
    failed = sum(r["failed"] for r in outcome.values())
    share = round(1 - failed / checked, 4) if checked else 1.0
    if failing:
        detail = "malformed outputs: " + "; ".join(
            f"{rule} {r['failed']}/{r['checked']} e.g. {r['examples'][:2]}" for rule, r in failing.items()
        )
    elif checked:
        detail = f"outputs well-formed ({share:.3f} of {checked} dates, amounts and currencies)"
    else:
        detail = "no dates, amounts or currencies in the outputs to check"
    return Check("well_formed_outputs", not failing, share, config.min_well_formed, detail), outcome


def drift_check(result: drift.DriftResult | None, skipped_reason: str = "") -> Check:
    if result is None:
        return Check("no_drift", True, None, None, f"drift not checked: {skipped_reason}")
    drifted = sorted(c for c, v in result.columns.items() if v["drifted"])
    detail = (
        f"drift: {result.drift_share:.2f} of features drifted (threshold {result.threshold:.2f}): {', '.join(drifted)}"
        if result.drifted
        else f"no drift: {result.drift_share:.2f} of features drifted (threshold {result.threshold:.2f})"
    )
    return Check("no_drift", not result.drifted, round(result.drift_share, 4), result.threshold, detail)


# ---------------------------------------------------------------- inputs


def frozen_examples(config: GateConfig, root: Path = PROJECT_ROOT) -> list[Example]:
    """The labeled pages both models are scored on: every frozen set, in order."""
    examples = []
    for folder in config.frozen_sets:
        path = Path(folder) if Path(folder).is_absolute() else root / folder
        examples.extend(load_examples(path))
    if not examples:
        raise ValueError(f"the frozen sets {config.frozen_sets} hold no labeled pages")
    return examples


def reference_pages(candidate: ModelRef, sample: int, seed: int = 0) -> tuple[list, dict[str, Any]]:
    """A seeded sample of the pages the candidate was trained on (its run's `data` and `train_split`)."""
    params = registry.client().get_run(candidate.run_id).data.params
    split = Path(params.get("data", "data"))
    split = (split if split.is_absolute() else PROJECT_ROOT / split) / params.get("train_split", "train")
    records = read_split(split)
    chosen = sorted(random.Random(seed).sample(range(len(records)), min(sample, len(records))))
    pages = drift.load_images([split / records[i].file_name for i in chosen])
    return pages, {"folder": str(split), "pages": len(pages), "data_version": params.get("data_version")}


def current_pages(folder: Path, config: GateConfig) -> tuple[list, dict[str, Any]]:
    """The newest production pages under `folder` (images and PDFs); unreadable files are listed, not used."""
    files = sorted(
        (p for p in Path(folder).rglob("*") if p.suffix.lower() in PAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    limits = Limits.from_params()
    pages, skipped = [], {}
    for path in files:
        if len(pages) >= config.current_sample:
            break
        try:
            pages.extend(limits.load(path.read_bytes(), path.name))
        except DocumentError as error:
            skipped[str(path)] = str(error)
    pages = pages[: config.current_sample]
    return pages, {"folder": str(folder), "pages": len(pages), "skipped": skipped}


# ---------------------------------------------------------------- the decision


def evaluate(
    candidate_ref: str = "challenger", current: Path | None = None, config: GateConfig | None = None
) -> Decision:
    """Score candidate and champion on the frozen sets, check drift, and decide (nothing is recorded yet)."""
    config = config or GateConfig()
    candidate = registry.resolve(candidate_ref)
    champion = registry.by_alias("champion")
    if champion == candidate:
        raise ValueError(f"version {candidate.version} is already the champion")
    examples = frozen_examples(config)
    model, processor = registry.load(candidate)
    candidate_scores, predictions = evaluate_model(model, processor, examples)
    champion_scores = None
    if champion is not None:
        champion_model, champion_processor = registry.load(champion)
        champion_scores, _ = evaluate_model(champion_model, champion_processor, examples)
        del champion_model
    answers = [p.fields for p in predictions]
    checks = accuracy_checks(candidate_scores, champion_scores, config)
    formed, formed_detail = well_formed_check(answers, config)
    checks.append(formed)
    evidence: dict[str, Any] = {
        "frozen_sets": list(config.frozen_sets),
        "candidate_scores": candidate_scores,
        "champion_scores": champion_scores,
        "well_formed": formed_detail,
        "config": asdict(config),
    }
    result, reason = None, "no current production pages given"
    if current is not None:
        current_images, evidence["current"] = current_pages(current, config)
        if current_images:
            reference_images, evidence["reference"] = reference_pages(candidate, config.reference_sample)
            frames = drift.feature_frames(
                model, processor, reference_images, current_images, config.embedding_components
            )
            result = drift.drift_report(*frames, drift_share=config.drift_share)
            evidence["drift"] = result.summary()
        else:
            reason = f"no readable pages in {current}"
    checks.append(drift_check(result, reason))
    decision = Decision(candidate, champion, checks, evidence)
    decision.evidence["drift_snapshot"] = result.report if result else None
    return decision


def _metric_name(rule: str) -> str:
    """`min_accuracy[total]` -> `gate_min_accuracy_total` (MLflow metric names take no brackets)."""
    return "gate_" + rule.replace("[", "_").replace("]", "")


def record(decision: Decision, workdir: Path) -> dict[str, Any]:
    """Log the evidence on the candidate's run, tag its version, and on a pass move the aliases."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    summary = {**decision.as_dict(), "decided_at": now}
    workdir.mkdir(parents=True, exist_ok=True)
    evidence = {k: v for k, v in decision.evidence.items() if k != "drift_snapshot"}
    (workdir / "decision.json").write_text(
        json.dumps({**summary, "evidence": evidence}, indent=2, default=str)
    )
    snapshot = decision.evidence.get("drift_snapshot")
    if snapshot is not None:
        snapshot.save_html(str(workdir / "drift_report.html"))
        (workdir / "drift_report.json").write_text(json.dumps(snapshot.dict(), indent=2, default=str))
    plots.gate_comparison_chart(
        decision.evidence["candidate_scores"],
        decision.evidence["champion_scores"],
        workdir / "field_comparison.png",
    )
    use_tracking()
    with mlflow.start_run(run_id=decision.candidate.run_id):
        mlflow.log_artifacts(str(workdir), artifact_path=f"gate/{now.replace(':', '')}")
        mlflow.log_metrics(
            {
                "gate_passed": float(decision.passed),
                **{_metric_name(c.rule): c.value for c in decision.checks if c.value is not None},
            }
        )
    tags = {
        "gate.decision": summary["decision"],
        "gate.reasons": "; ".join(decision.reasons)[:4900] or "all rules passed",
        "gate.decided_at": now,
        "gate.champion_version": decision.champion.version if decision.champion else "none",
    }
    registry.tag(decision.candidate, tags)
    if decision.passed:
        if decision.champion is not None:
            registry.set_alias("previous", decision.champion)
        registry.set_alias("champion", decision.candidate)
        registry.tag(decision.candidate, {"gate.promoted_at": now})
    return summary


def rollback(reason: str = "manual rollback") -> dict[str, Any]:
    """Move `champion` back to the `previous` version; the demoted version is tagged with why."""
    champion, previous = registry.by_alias("champion"), registry.by_alias("previous")
    if previous is None:
        raise LookupError("no previous champion to roll back to")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    registry.set_alias("champion", previous)
    registry.delete_alias("previous")
    if champion is not None:
        registry.tag(champion, {"gate.rolled_back_at": now, "gate.rollback_reason": reason})
    registry.tag(previous, {"gate.restored_at": now})
    return {
        "champion": asdict(previous),
        "demoted": asdict(champion) if champion else None,
        "reason": reason,
        "at": now,
    }
