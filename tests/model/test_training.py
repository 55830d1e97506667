"""Training behaviour: the pipeline learns, runs are tracked in a real MLflow server, resume is exact."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from training.data import read_split
from training.train import TrainConfig, train


@pytest.mark.slow
def test_tiny_model_learns_a_handful_of_invoices_and_the_run_is_tracked(
    mlflow_server, handful, train_config, tmp_path
):
    import mlflow
    from training.tracking import MODEL_NAME, train_and_log

    result = train_and_log(train_config(handful, tmp_path / "run"), progress=False)
    assert result["scores"]["n"] == 4
    assert {f: v["accuracy"] for f, v in result["scores"]["per_field"].items()} == dict.fromkeys(
        result["scores"]["per_field"], 1.0
    )
    assert result["scores"]["distinct_share"] == 1.0 and result["stopped_early"] is True

    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(result["run_id"])
    params = run.data.params
    assert params["preset"] == "tiny" and params["learning_rate"] == "0.001" and params["hw_device"] == "cpu"
    assert params["data_version"].startswith("sha256:") and params["data_version_source"] == "content"
    assert len(params["git_commit"]) >= 40 and int(params["model_parameters"]) > 1_000_000
    assert run.data.metrics["final_accuracy_total"] == 1.0 and run.data.metrics["final_f1"] == 1.0
    losses = client.get_metric_history(result["run_id"], "loss")
    assert len(losses) >= 10 and losses[-1].value < losses[0].value / 10
    assert {m.key for m in client.get_metric_history(result["run_id"], "samples_per_s")} == {"samples_per_s"}
    assert client.get_metric_history(result["run_id"], "accuracy_invoice_number")[-1].value == 1.0
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "evaluation")}
    assert {
        "evaluation/field_accuracy.png",
        "evaluation/sample_predictions.png",
        "evaluation/scores.json",
    } <= artifacts
    assert [a.path for a in client.list_artifacts(result["run_id"], "config")] == ["config/config.json"]

    version = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    assert version.run_id == result["run_id"] and version.version == result["registered_version"]
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@challenger")
    assert [i.name for i in model.metadata.get_input_schema().inputs] == ["image"]
    record = read_split(handful / "validation")[0]
    image = base64.b64encode((handful / "validation" / record.file_name).read_bytes()).decode()
    output = model.predict(pd.DataFrame({"image": [image]}))
    assert json.loads(output["fields"][0]) == record.gt_parse
    confidence = json.loads(output["confidence"][0])
    assert set(confidence) >= {"vendor_name", "total"} and all(0 < p <= 1 for p in confidence.values())


def test_resume_from_checkpoint_gives_the_same_next_loss(handful, train_config, tmp_path):
    config = train_config(
        handful, tmp_path / "uninterrupted", max_steps=4, checkpoint_every=2, eval_every=1000, log_every=1
    )
    snapshot = tmp_path / "interrupted"

    def keep_step_two_checkpoint(kind, values, step):
        if step == 3:  # the step-2 checkpoint is on disk: keep it as if the run had died right after it
            shutil.copytree(Path(config.output), snapshot)

    uninterrupted = train(config, log=keep_step_two_checkpoint, progress=False)
    losses = {}

    def record(kind, values, step):
        if kind == "step":
            losses[step] = values["loss"]

    resumed = train(TrainConfig(**{**config.__dict__, "output": str(snapshot)}), log=record, progress=False)
    assert resumed["steps"] == uninterrupted["steps"] == 4
    assert sorted(losses) == [3, 4], "the resumed run starts after the checkpointed step"
    expected = {entry["step"]: entry["loss"] for entry in _history(tmp_path / "uninterrupted")}
    assert losses[3] == pytest.approx(expected[3], abs=1e-6) and losses[4] == pytest.approx(
        expected[4], abs=1e-6
    )

    # another configuration in the same folder does not pick up that run's checkpoint: it starts afresh
    losses.clear()
    changed = TrainConfig(**{**config.__dict__, "max_steps": 2, "learning_rate": 5e-4})
    assert train(changed, log=record, progress=False)["steps"] == 2 and sorted(losses) == [1, 2]


def _history(output: Path) -> list[dict]:
    import torch

    return torch.load(output / "checkpoint" / "last.pt", weights_only=False)["state"]["history"]


def test_reading_curriculum_targets_the_page_transcript(handful, train_config, tmp_path):
    """The reading task starts from <s_reading> and spells the page's text; the field task from <s_invoice>."""
    from training.evaluate import load_examples
    from training.tokenizer import TASK_TOKENS
    from training.train import InvoicePages, prepare

    config = train_config(handful, tmp_path / "curriculum", max_steps=3, reading_steps=2, eval_every=1000)
    _, processor, examples, _ = prepare(config)
    pages = InvoicePages(examples, processor, max_length=384)
    tokenizer = processor.tokenizer
    inputs, labels = pages.sequence(*pages.target(0, "reading"))
    assert inputs[0].item() == tokenizer.convert_tokens_to_ids(TASK_TOKENS["reading"])
    assert labels[-1].item() == tokenizer.eos_token_id and torch_equal(inputs[1:], labels[:-1])
    transcript = load_examples(handful / "train")[0].meta["text"]
    assert tokenizer.decode(labels[:-1]).split()[:3] == transcript.split()[:3]
    inputs, _ = pages.sequence(*pages.target(0, "invoice"))
    assert inputs[0].item() == tokenizer.convert_tokens_to_ids(TASK_TOKENS["invoice"])

    steps = []
    summary = train(config, log=lambda kind, values, step: steps.append((kind, step)), progress=False)
    assert summary["steps"] == 3 and ("step", 3) in steps


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
