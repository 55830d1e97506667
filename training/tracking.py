"""MLflow: where runs go, what a training run logs, and the pyfunc model that the registry serves."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel
from PIL import Image

import mlflow
from training import plots
from training.config import PROJECT_ROOT
from training.evaluate import flat_scores, load_examples, score_by_slice
from training.model import describe, load_pretrained
from training.predict import Prediction, predict
from training.train import TrainConfig, evaluate_model, run_params, train

MODEL_NAME = "invoice-extractor"
EXPERIMENT = "invoice-extractor"
LOCAL_STORE = PROJECT_ROOT / "var" / "mlflow"


def _server_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the `make up` server if it answers, else a local SQLite store."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    server = f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}"
    if _server_up(server):
        return server
    LOCAL_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{LOCAL_STORE / 'mlflow.db'}"


def use_tracking() -> str:
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        # A local store keeps artifacts beside its database, not in the working directory.
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
        mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    mlflow.set_experiment(EXPERIMENT)
    return uri


class InvoiceExtractor(PythonModel):
    """The registered model: base64 images in, JSON fields and per-field confidence out."""

    def load_context(self, context) -> None:
        self.model, self.processor = load_pretrained(context.artifacts["model_dir"])

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        images = [
            Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB") for data in model_input["image"]
        ]
        predictions = predict(self.model, self.processor, images)
        return pd.DataFrame(
            {
                "fields": [json.dumps(p.fields) for p in predictions],
                "confidence": [json.dumps(p.confidence) for p in predictions],
            }
        )


def thumbnail_base64(path: Path, max_side: int) -> str:
    """A small PNG of an image file, base64-encoded: the model's input example."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def log_extractor(
    model_dir: str | Path, example_image: Path, example: Prediction, register: bool = True
) -> dict[str, Any]:
    """Log a transformers-format model folder as the pyfunc extractor of the active run; with `register`,
    register it as a new version of the invoice extractor holding the `challenger` alias."""
    input_example = pd.DataFrame({"image": [thumbnail_base64(example_image, max_side=256)]})
    output_example = pd.DataFrame(
        {"fields": [json.dumps(example.fields)], "confidence": [json.dumps(example.confidence)]}
    )
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=InvoiceExtractor(),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(Path(__file__).resolve().parent)],  # the package, wherever the project is
        signature=mlflow.models.infer_signature(input_example, output_example),
        input_example=input_example,
        registered_model_name=MODEL_NAME if register else None,
    )
    logged: dict[str, Any] = {"model_uri": info.model_uri}
    if register:
        version = info.registered_model_version
        mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, "challenger", version)
        logged["registered_version"] = version
    return logged


def train_and_log(config: TrainConfig, register: bool = True, progress: bool = True) -> dict[str, Any]:
    """Train with every step and evaluation logged to MLflow, then log, register and alias the model."""
    use_tracking()
    name = f"{'base' if config.base else config.preset}-{Path(config.output).name}"
    with mlflow.start_run(run_name=name) as run:
        params = run_params(config)
        mlflow.log_params(params)
        mlflow.set_tags({"data_version": params["data_version"], "preset": config.preset})

        def log(kind: str, values: dict[str, Any], step: int) -> None:
            mlflow.log_metrics(values if kind == "step" else flat_scores(values), step=step)

        summary = train(config, log=log, progress=progress)
        model, processor = load_pretrained(summary["model_dir"])
        mlflow.log_params({f"model_{k}": v for k, v in describe(model).items()})
        examples = load_examples(Path(config.data) / config.eval_split)
        scores, predictions = evaluate_model(model, processor, examples)
        mlflow.log_metrics(flat_scores(scores, prefix="final_"))
        slices = score_by_slice([p.fields for p in predictions], examples)
        artifacts = Path(config.output) / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "scores.json").write_text(json.dumps({"overall": scores, "slices": slices}, indent=2))
        plots.field_accuracy_chart(scores, artifacts / "field_accuracy.png")
        plots.prediction_sheet(examples[:6], predictions[:6], artifacts / "sample_predictions.png")
        mlflow.log_artifacts(str(artifacts), artifact_path="evaluation")
        mlflow.log_artifact(str(Path(config.output) / "config.json"), artifact_path="config")
        result = {**summary, "run_id": run.info.run_id, "scores": scores}
        result.update(log_extractor(summary["model_dir"], examples[0].image, predictions[0], register))
    return result
